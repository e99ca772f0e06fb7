"""The repo-info JSON object, shared by repo info (`/api/{type}/{repo}`) and the repo listings."""

from __future__ import annotations

import hashlib
from typing import Any

from .repos import EPOCH, Commit, Repo, iso


def repo_data(repo: Repo, commit: Commit, *, blobs: bool) -> dict[str, Any]:
    """Repo info at `commit`, as the Hub answers it without `expand`.

    `siblings` carry only `rfilename` unless `blobs` (the `?blobs=true` that `files_metadata=True`
    sends) adds `size`, `blobId` and, for LFS files, `lfs{size,sha256,pointerSize}` (hf_api.py
    ModelInfo/DatasetInfo parse exactly these keys).
    """
    siblings = []
    for path, blob in commit.files.items():
        sibling: dict[str, Any] = {"rfilename": path}
        if blobs:
            sibling.update(size=blob.size, blobId=blob.oid)
            if blob.pointer is not None:
                sibling["lfs"] = {"size": blob.size, "sha256": blob.sha256, "pointerSize": len(blob.pointer)}
        siblings.append(sibling)
    author = repo.repo_id.split("/")[0] if "/" in repo.repo_id else None
    data: dict[str, Any] = {
        "_id": hashlib.sha1(f"{repo.repo_type}/{repo.repo_id}".encode()).hexdigest()[:24],
        "id": repo.repo_id,
        "author": author,
        "sha": commit.sha,
        "lastModified": iso(commit.date),
        "createdAt": iso(EPOCH),
        "private": repo.private,
        "gated": repo.gated,
        "disabled": False,
        "tags": [],
        "downloads": 0,
        "likes": 0,
        "siblings": siblings,
        "xetEnabled": True,
        "usedStorage": sum(blob.size for blob in commit.files.values()),
    }
    if repo.repo_type == "model":
        data["modelId"] = repo.repo_id
    elif repo.repo_type == "space":
        data.update(sdk="gradio", runtime={"stage": "RUNNING", "hardware": {"current": "cpu-basic"}})
    return data
