"""Blobs: serving content-addressed bytes from storage, or filling them from upstream."""
