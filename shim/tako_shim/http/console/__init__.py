"""The web console: server-rendered pages under ``/console/`` over the backend interface (docs/console.md)."""

from tako_shim.http.console.routes import add_console

__all__ = ["add_console"]
