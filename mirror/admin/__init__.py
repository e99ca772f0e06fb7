"""Admin surface: the allow-list and its API (token-protected)."""
