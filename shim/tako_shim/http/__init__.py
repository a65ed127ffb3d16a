"""The web layer: the aiohttp application, its middleware, the OpenAPI document and the routes."""
