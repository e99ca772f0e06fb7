"""Where each kind of cached thing lives in storage.

Blobs are content-addressed (sha256 for LFS files, git blob sha1 for the rest), so the same bytes
under another repo or commit are stored once. Everything else is small JSON under repos/.
"""

from __future__ import annotations

import hashlib

from mirror.repo import RepoRef, is_commit


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _fanned_out(etag: str) -> str:
    """`<algorithm>/<first hash byte>/<hash>`: where every per-blob key puts its blob."""
    algo = "sha256" if len(etag) == 64 else "sha1"
    return f"{algo}/{etag[:2]}/{etag}"


def blob_key(etag: str) -> str:
    return f"blobs/{_fanned_out(etag)}"


ALLOWLIST = "admin/allowlist.json"
BLOBS = "blobs/"
REPOS = "repos/"
SYNC_JOBS = "admin/sync/jobs/"
SCHEDULER_LEASE = "admin/sync/scheduler-lease.json"
FILL_LEASES = "leases/fills/"
# When each blob was last read, in 256 shards by the blob's first hash byte (cache/blobs/access.py).
ACCESS = "access/"
QUARANTINE = "quarantine/"
# The lease of the replica that runs eviction, gc and the scrub for all of them.
MAINTENANCE_LEASE = "admin/maintenance-lease.json"
# A purge in progress: written before a repo's records are deleted, removed after (gc finishes it).
PURGES = "admin/purges/"


def repo_prefix(repo: RepoRef) -> str:
    """Everything stored about one repo (not its blobs, which repos share)."""
    return f"{REPOS}{repo.storage_prefix}/"


def sync_job_key(job_id: str) -> str:
    return f"{SYNC_JOBS}{job_id}.json"


def sync_entry_key(entry_id: str) -> str:
    """What the last sync of an allow-list entry did (time, errors)."""
    return f"admin/sync/entries/{entry_id}.json"


def fill_lease_key(blob_key: str) -> str:
    return f"{FILL_LEASES}{blob_key}.json"


def pin_key(repo: RepoRef, revision: str) -> str:
    """The commit a completed sync fixed a branch of an allow-listed repo at."""
    return f"{repo_prefix(repo)}pins/{_digest(revision)}.json"


def etag_of_blob(key: str) -> str | None:
    """The content hash a blob key names, or None for any other key."""
    parts = key.split("/")
    if len(parts) != 4 or parts[0] != "blobs" or parts[1] not in ("sha256", "sha1"):
        return None
    etag = parts[3]
    if len(etag) != (64 if parts[1] == "sha256" else 40) or parts[2] != etag[:2]:
        return None
    return etag


def access_shard_key(blob_key: str) -> str:
    """The shard recording last reads of this blob (and every blob sharing its first hash byte)."""
    return f"{ACCESS}{blob_key.rsplit('/', 2)[-2]}.json"


def quarantine_key(etag: str) -> str:
    """Why stored bytes of this blob failed a re-check (the bytes themselves are removed)."""
    return f"{QUARANTINE}{_fanned_out(etag)}.json"


def purge_key(repo: RepoRef) -> str:
    return f"{PURGES}{repo.api_type}/{_digest(repo.repo_id)}.json"


def poison_key(etag: str) -> str:
    """The record that some upstream copy of this blob failed verification after bytes of it went out."""
    return f"poisoned/{_fanned_out(etag)}.json"


def entry_key(repo: RepoRef, commit: str, path: str) -> str:
    # Hashed names: a file "a.json" and a folder "a.json/" must not collide, and paths stay short.
    digest = _digest(path)
    return f"repos/{repo.storage_prefix}/entries/{commit}/{digest[:2]}/{digest}.json"


def lfs_key(repo: RepoRef, oid: str) -> str:
    """That an LFS object belongs to a repo (the upstream's batch API said so), and its size.

    git-lfs names objects by sha256 alone: this is what lets the mirror serve one it holds without
    asking upstream again, and what keeps its blob from gc like a file entry does.
    """
    return f"repos/{repo.storage_prefix}/lfs/{oid[:2]}/{oid}.json"


def xet_file_key(repo: RepoRef, xet_hash: str) -> str:
    """A file of the repo by its Xet hash (what a Xet client asks the mirror's CAS for): its blob and where it is."""
    return f"repos/{repo.storage_prefix}/xet/{xet_hash[:2]}/{xet_hash}.json"


XET_FILES = "xet/files/"
XET_XORBS = "xet/xorbs/"


def xet_terms_key(etag: str) -> str:
    """How a cached blob splits into Xet chunks of which xorbs (written once the blob was verified)."""
    return f"{XET_FILES}{etag[:2]}/{etag}.json"


def xorb_index_key(xorb: str) -> str:
    """Which cached blobs hold which chunk ranges of a xorb."""
    return f"{XET_XORBS}{xorb[:2]}/{xorb}.json"


XET_SECRET = "admin/xet-secret.json"


def ref_key(repo: RepoRef, revision: str) -> str:
    """Last known commit of a branch or tag ("" = the default branch)."""
    return f"repos/{repo.storage_prefix}/refs/{_digest(revision)}.json"


# paths-info answers are stored under a versioned kind. Mirrors before v2 sent the form as
# text/plain, which the Hub reads as no form at all: they may hold `[]` as a commit's answer for
# paths that exist. A new name leaves those records unread for good, which is cheaper and safer than
# a purge at start (nothing else reads them; a purge of the repo removes them with the rest).
PATHS_INFO = "paths-info-v2"


def api_key(repo: RepoRef, commit: str, kind: str, query: str) -> str:
    """An API answer that is fixed once the commit is (info, tree, paths-info, commits)."""
    return f"repos/{repo.storage_prefix}/api/{commit}/{kind}-{_digest(query)}.json"


def latest_key(repo: RepoRef, kind: str, query: str) -> str:
    """The last upstream answer of a mutable listing (refs, llama.cpp manifests), kept for when upstream is down."""
    return f"repos/{repo.storage_prefix}/latest/{kind}-{_digest(query)}.json"


def listing_key(api_type: str, who: str, query: str) -> str:
    """The last upstream answer of a repo listing (`/api/models?author=...`) for one caller.

    `who` is the token fingerprint: the Hub lists a token's private repos too, so answers are never
    shared between tokens. Not under repos/: a listing names many repos.
    """
    digest = _digest(f"{who}\n{query}")
    return f"listings/{api_type}/{digest}.json"


def visibility_key(repo: RepoRef) -> str:
    return f"repos/{repo.storage_prefix}/visibility.json"


# The kinds of record stored under a repo's prefix (repos/<type>s/<repo id>/<kind>...).
REPO_RECORD_KINDS = ("refs", "entries", "lfs", "xet", "api", "latest", "pins", "visibility.json")


def parse_repo_key(key: str) -> tuple[RepoRef, str, list[str]] | None:
    """(repo, kind, the parts after the kind) of a key under repos/, or None for any other key."""
    parts = key.split("/")
    if len(parts) < 4 or parts[0] != "repos" or parts[1] not in ("models", "datasets", "spaces"):
        return None
    # Two-part ids first: "org/refs" has its records at repos/models/org/refs/refs/...
    cut = next((i for i in (4, 3) if i < len(parts) and parts[i] in REPO_RECORD_KINDS), None)
    if cut is None:
        return None
    return RepoRef(parts[1][:-1], "/".join(parts[2:cut])), parts[cut], parts[cut + 1 :]


def is_immutable(key: str) -> bool:
    """Records fixed once written: answers and file entries at a commit, LFS objects, Xet splits of blobs."""
    parts = key.split("/")
    if key.startswith(XET_FILES):
        return True
    if parts[0] != "repos":
        return False
    parsed = parse_repo_key(key)
    if parsed is not None and parsed[1] == "lfs":
        return True
    # repos/<type>/<repo id: 1 or 2 parts>/(api|entries)/<commit>/...
    return any(
        parts[i] in ("api", "entries") and len(parts) > i + 1 and is_commit(parts[i + 1])
        for i in (3, 4)
        if i < len(parts)
    )
