"""llama.cpp's `-hf user/repo[:tag]` lookup: `GET /v2/{repo}/manifests/{tag}`.

Older llama.cpp builds (common/download.cpp, `common_get_hf_file`; still what many distributions
ship) ask this route, with `Accept: application/json` and `User-Agent: llama-cpp`, for a JSON
manifest whose `ggufFile.rfilename` (and `mmprojFile.rfilename`) name the files to fetch; they then
download `{endpoint}/{repo}/resolve/main/{file}` (and its `-0000N-of-0000M` split siblings), which
the resolve route serves. Current builds (common/hf-cache.cpp) skip the manifest: they read
`/api/models/{repo}/refs`, then `/api/models/{repo}/tree/{commit}?recursive=true`, then
`resolve/{commit}/{file}`, all served by the ordinary API and resolve routes.

The mirror always asks upstream as llama.cpp does, whoever asks it: the Hub shapes the manifest by
User-Agent, and the llama.cpp form is the one whose follow-up downloads the mirror can serve.
"""

from __future__ import annotations

from aiohttp import web

from mirror.errors import MethodNotAllowed
from mirror.hub.api import json_response
from mirror.hub.appkeys import LISTINGS, POLICY
from mirror.hub.paths import ManifestTarget
from mirror.tokens import bearer_token


async def handle_manifest(request: web.Request, target: ManifestTarget) -> web.Response:
    if request.method not in ("GET", "HEAD"):
        raise MethodNotAllowed(request.method, ("GET", "HEAD"))
    token = bearer_token(request.headers.get("Authorization"))
    # The manifest names files, like a tree listing: metadata, readable wherever repo info is.
    await request.app[POLICY].check(target.repo, token, files=False)
    data = await request.app[LISTINGS].llamacpp_manifest(target.repo, target.tag, token)
    return json_response(request, data)
