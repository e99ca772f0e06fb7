"""The hash a blob's address names: one rule for fills, the scrub and bundles.

LFS files are addressed by the sha256 of their bytes (64 hex digits); other files by their git
blob id (40 hex digits): the sha1 of `blob <size>\\0` followed by the bytes.
"""

from __future__ import annotations

import hashlib
from typing import Any


def blob_hasher(etag: str, size: int) -> Any:
    """A fresh hash object that, fed the blob's bytes, gives `etag` if they are the right ones."""
    if len(etag) == 64:
        return hashlib.sha256()
    hasher = hashlib.sha1()
    hasher.update(b"blob %d\0" % size)
    return hasher
