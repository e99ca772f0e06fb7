"""Usage per repo: what each cached repo costs in storage, when it was last read, whether it is pinned.

Blobs are shared (the same weights under two repos are stored once), so a repo's `bytes` counts
every stored blob its files name, and the totals say how much is shared.
"""

from __future__ import annotations

from typing import Any

from mirror.cache.blobs.access import AccessLog, stored_blobs
from mirror.lifecycle.inventory import blobs_at, pins_in_force, repo_files
from mirror.policy.allowlist import AllowList
from mirror.storage import Storage


async def repo_usage(storage: Storage, access: AccessLog, allowlist: AllowList) -> dict[str, Any]:
    """Per repo: revisions, commits (files, bytes), stored blobs and bytes, last read, pinned; and totals."""
    stored = {key: size async for key, size, _ in stored_blobs(storage)}
    reads = await access.last_reads()
    pins = await pins_in_force(storage, allowlist)
    pinned_repos = {pin.repo for pin in pins}
    pinned_blobs = {key for pin in pins async for key, _ in blobs_at(storage, pin.repo, pin.commit)}
    repos = []
    referenced: set[str] = set()
    by_repo = await repo_files(storage)
    for repo, files in sorted(by_repo.items(), key=lambda item: (item[0].repo_type, item[0].repo_id)):
        held = {key: stored[key] for key in files.blobs if key in stored}
        referenced.update(held)
        last = max((reads.get(key, 0.0) for key in held), default=0.0)
        repos.append(
            {
                "repo_type": repo.repo_type,
                "repo": repo.repo_id,
                "revisions": files.revisions,
                "commits": {c: {"files": n, "bytes": b} for c, (n, b) in files.commits.items()},
                "files": sum(n for n, _ in files.commits.values()),
                # Bytes the files name, whether or not their blobs are stored now (evicted ones refill).
                "file_bytes": sum(b for _, b in files.commits.values()),
                "blobs": len(held),
                "bytes": sum(held.values()),
                "last_access": last or None,
                "pinned": repo in pinned_repos,
            }
        )
    totals = {
        "blobs": len(stored),
        "bytes": sum(stored.values()),
        "referenced_bytes": sum(stored[key] for key in referenced),
        "pinned_bytes": sum(stored.get(key, 0) for key in pinned_blobs),
    }
    return {"repos": repos, "totals": totals}
