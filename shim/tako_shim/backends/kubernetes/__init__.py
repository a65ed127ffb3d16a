"""The Kubernetes backend: PythonJob objects through the API server, watched back into records."""
