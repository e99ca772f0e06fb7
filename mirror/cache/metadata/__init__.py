"""Metadata: which commit a revision names, which blob a file at a commit is, and listings."""
