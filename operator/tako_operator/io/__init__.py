"""The operator's I/O parts: the Kubernetes API, the standby pool, metrics, leader election."""
