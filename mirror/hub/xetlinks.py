"""The Xet headers of a resolve answer when the mirror is its clients' Xet CAS (`hub.xet: serve`)."""

from __future__ import annotations

from aiohttp import web

from mirror.cache import keys
from mirror.cache.metadata.entries import FileEntry
from mirror.hub.api import mirror_origin
from mirror.hub.appkeys import BLOBS, CONFIG, RECORDS


async def xet_headers(request: web.Request, entry: FileEntry) -> dict[str, str]:
    """The Xet headers of a resolve answer, in serve mode, for a file the mirror can serve by chunks."""
    if request.app[CONFIG].hub.xet != "serve" or not entry.xet_hash:
        return {}
    # Cached over HTTP without its terms: no chunks to serve; the client downloads it over HTTP.
    split = await request.app[RECORDS].get(keys.xet_terms_key(entry.etag))
    if split is None and await request.app[BLOBS].is_stored(entry):
        return {}
    repo = entry.repo
    route = f"{mirror_origin(request)}/api/{repo.api_type}/{repo.repo_id}/xet-read-token/{entry.commit}"
    return {"X-Xet-Hash": entry.xet_hash, "Link": f'<{route}>; rel="xet-auth"', "X-Xet-Refresh-Route": route}
