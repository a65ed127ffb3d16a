"""Completion webhooks: the address policy (``policy``), one signed attempt (``sender``) and the retry loop
(``dispatcher``). Both backends use them; each keeps the delivery state in its own store (SQLite locally,
the PythonJob's status in a cluster)."""
