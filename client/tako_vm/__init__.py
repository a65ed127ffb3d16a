"""Tako VM SDK: submit Python to a Tako VM server and read back results."""

__version__ = "0.1.0"
