"""The cache between the Hub routes and storage: revisions, metadata, file entries, blobs, fills."""
