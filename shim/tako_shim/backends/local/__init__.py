"""The local backend: SQLite history, a bounded worker pool and the runsc sandbox executor."""
