"""The bundle format: what `export_bundle` writes and `verify_bundle` accepts.

A bundle carries what a mirror reads to serve a revision (its blobs, the file entries naming them,
repo info, trees, paths-info, refs, pins and visibility). Layout (a directory, or the same names in
an uncompressed tar):

    objects/<storage key>   every record and blob, under the key it has in storage
    manifest.json           what the bundle holds: repos, commits, and the size and hash of every object
    manifest.sha256         sha256 of manifest.json, as `sha256sum` writes it

The manifest is written last, once every object is: a truncated tar then has none, and an export
reads each object once (hashing as it copies) without holding any of them back.
"""

from __future__ import annotations

import hashlib
import json
import re

from mirror.cache import keys
from mirror.repo import RepoRef

FORMAT = "hub-mirror-bundle"
# Raised only when an older hub-mirror could not import the new form correctly.
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MANIFEST_SUM = "manifest.sha256"
OBJECTS = "objects/"
# A manifest names every object with its hash (~250 bytes each); this is millions of objects.
MAX_MANIFEST = 512 * 1024 * 1024

# Records under repos/<type>/<id>/ that a bundle may carry, and whether they change over time
# (those are compared by their time before one replaces another).
_COMMIT_RECORD = re.compile(r"(api|entries)/([0-9a-f]{40})/(.+)")
_MUTABLE_RECORD = re.compile(r"(refs|pins)/[0-9a-f]{64}\.json|latest/[A-Za-z0-9._\-]+\.json|visibility\.json")


def _hash_label(etag: str) -> str:
    return f"{'sha256' if len(etag) == 64 else 'git-blob-sha1'}:{etag}"


def _sha256(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def _is_mutable(key: str, repo: RepoRef) -> bool:
    return bool(_MUTABLE_RECORD.fullmatch(key[len(keys.repo_prefix(repo)) :]))


def _record_at(data: bytes) -> float | None:
    """The time a ref, pin or visibility record says it was written, if it says."""
    try:
        value = json.loads(data)
    except ValueError:
        return None
    at = value.get("at") if isinstance(value, dict) else None
    return float(at) if isinstance(at, int | float) and not isinstance(at, bool) else None
