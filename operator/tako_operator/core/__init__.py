"""The operator's pure parts: decisions, status, manifests (no Kubernetes client, kopf or aiohttp)."""
