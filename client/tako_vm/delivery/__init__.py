"""Completion webhooks, shared by the shim (local backend) and the operator (kubernetes backend):
where a webhook may go (``policy``, the SSRF guard), what a delivery is and what follows one attempt
(``state``, pure), and one signed attempt over the network (``send``). Each sender keeps the delivery
state in its own durable store: SQLite on the local backend, the PythonJob's ``status.webhook`` in a
cluster. Not part of the SDK's public surface (``tako_vm.webhooks.verify`` is)."""
