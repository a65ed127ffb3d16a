"""The aiohttp REST shim speaking the Tako VM contract, with local and kubernetes backends."""
