"""Pydantic models shared by the SDK, the shim and the operator: the REST wire and the CRDs."""
