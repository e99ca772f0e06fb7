"""git-lfs through the mirror: its batch API answered here, its objects served from the blob cache.

`POST {repo}.git/info/lfs/objects/batch` (download only) answers each object with an href to the
mirror's own `{repo}.git/info/lfs/objects/{oid}`, once the object is known to be the repo's
(cache/metadata/lfs.py). That route serves the blob as resolve does: from the cache, else from the
one fill of it (single-flight, sha256 verified before the last byte goes out, Range), which asks
the upstream's batch API for a fresh href on every attempt. The bytes are the same blob the
resolve of any file with that content reads, so a repo downloaded with `hf download` is a clone's
LFS cache too, and the other way round.

The repo's policy (allow-list, gated and private access for the caller's token) is checked on
both routes, exactly as for resolve. Uploads are refused: the mirror is read-only.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from mirror.errors import (
    BadRequest,
    EntryNotFound,
    MethodNotAllowed,
    ReadOnly,
    Unprocessable,
    UnsupportedMediaType,
)
from mirror.hub.api import mirror_origin
from mirror.hub.appkeys import LFS, POLICY
from mirror.hub.bodies import read_body
from mirror.hub.paths import LFS_OBJECT, GitTarget
from mirror.hub.resolve import EXPOSED, serve_blob
from mirror.repo import LfsObject
from mirror.tokens import git_token
from mirror.upstream import LFS_TYPE, LfsRefusal

# git-lfs asks for 100 objects per batch (lfs.transfer.batchSize): a few KiB. This bounds what one
# request makes the mirror hold and ask upstream for.
MAX_LFS_BATCH = 1024 * 1024
MAX_OBJECTS = 1000
JSON_TYPES = (LFS_TYPE, "application/json")


READ_ONLY = "hub-mirror is read-only: push to the Hub itself"


async def handle_lfs_batch(request: web.Request, target: GitTarget) -> web.Response:
    if request.method != "POST":
        raise MethodNotAllowed(request.method, ("POST",))
    wanted = await _download_batch(request)
    token = git_token(request.headers.get("Authorization"))
    await request.app[POLICY].check(target.repo, token, files=True)
    found = await request.app[LFS].find(target.repo, wanted, token) if wanted else {}
    base = _object_base(request, target)
    # git-lfs sends the action's headers with the download: the same credentials reach the object route.
    header = {"Authorization": request.headers["Authorization"]} if "Authorization" in request.headers else {}
    objects: list[dict[str, Any]] = []
    for oid, size in wanted:
        answer = found[oid]
        if isinstance(answer, LfsRefusal):
            objects.append({"oid": oid, "size": size, "error": {"code": answer.code, "message": answer.message}})
            continue
        download: dict[str, Any] = {"href": f"{base}/{oid}"}
        if header:
            download["header"] = header
        objects.append({"oid": oid, "size": size, "authenticated": True, "actions": {"download": download}})
    body = json.dumps({"transfer": "basic", "objects": objects, "hash_algo": "sha256"}).encode()
    return web.Response(body=body, content_type=LFS_TYPE, headers={"Cache-Control": "no-store"})


async def handle_lfs_object(request: web.Request, target: GitTarget) -> web.StreamResponse:
    if request.method not in ("GET", "HEAD"):
        raise MethodNotAllowed(request.method, ("GET", "HEAD"))
    token = git_token(request.headers.get("Authorization"))
    await request.app[POLICY].check(target.repo, token, files=True)
    obj = await request.app[LFS].known(target.repo, target.oid)
    if obj is None:
        raise EntryNotFound(
            f"LFS object {target.oid} is not known to be part of {target.repo.repo_id}: "
            "git-lfs asks the batch API (info/lfs/objects/batch) first"
        )
    return await serve_blob(request, obj, object_headers(obj), token, request.headers.get("Range"), redirectable=False)


def object_headers(obj: LfsObject) -> dict[str, str]:
    return {
        "ETag": f'"{obj.oid}"',
        "Accept-Ranges": "bytes",
        "Content-Type": "application/octet-stream",
        "Access-Control-Expose-Headers": EXPOSED,
    }


async def _download_batch(request: web.Request) -> list[tuple[str, int]]:
    """The (oid, size) pairs a download batch request asks for; anything else is refused."""
    content_type = request.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
    if content_type not in JSON_TYPES:
        raise UnsupportedMediaType(f"an LFS batch request is {LFS_TYPE}, not {content_type or 'untyped'}")
    raw = await read_body(request, MAX_LFS_BATCH, "an LFS batch request")
    try:
        batch = json.loads(raw)
    except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth
        batch = None
    if not isinstance(batch, dict) or not isinstance(batch.get("operation"), str):
        raise BadRequest("an LFS batch request is a JSON object with an operation")
    if batch["operation"] == "upload":
        raise ReadOnly(READ_ONLY)
    if batch["operation"] != "download":
        raise Unprocessable(f"unknown LFS operation {batch['operation'][:100]!r}: expected download")
    transfers = batch.get("transfers", ["basic"])
    if not isinstance(transfers, list) or "basic" not in transfers:
        raise Unprocessable("hub-mirror serves LFS objects with the basic transfer adapter only")
    if batch.get("hash_algo", "sha256") != "sha256":
        raise Unprocessable("hub-mirror knows LFS objects by sha256 only")
    objects = batch.get("objects")
    if not isinstance(objects, list):
        raise Unprocessable("an LFS batch request lists its objects")
    if len(objects) > MAX_OBJECTS:
        raise Unprocessable(f"an LFS batch request asks for at most {MAX_OBJECTS} objects")
    wanted: dict[str, int] = {}
    for item in objects:
        oid = item.get("oid") if isinstance(item, dict) else None
        size = item.get("size") if isinstance(item, dict) else None
        if not isinstance(oid, str) or not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise Unprocessable("each LFS object is an oid (string) and a size (non-negative integer)")
        wanted[oid[:100]] = size
    return list(wanted.items())


def _object_base(request: web.Request, target: GitTarget) -> str:
    """The absolute URL of the repo's object route (git-lfs needs absolute hrefs): `server.public_url`
    behind a load balancer, else the Host the client called the mirror by."""
    repo = target.repo
    return f"{mirror_origin(request)}/{repo.url_prefix}{repo.repo_id}.git/{LFS_OBJECT}"
