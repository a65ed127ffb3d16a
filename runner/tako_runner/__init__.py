"""The in-sandbox runner (stdlib only) and its result-envelope parsing."""
