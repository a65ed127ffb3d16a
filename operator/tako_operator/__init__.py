"""The kopf operator reconciling PythonJobs into gVisor Pods."""
