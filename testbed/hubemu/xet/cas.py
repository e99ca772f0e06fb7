"""The Xet CAS routes, served on the emulator's CDN origin (the `casUrl` the xet-read-token route hands out).

Shapes follow xet-core `openapi/cas.openapi.yaml` and `spec/api.md`; the download flow is hf_xet's
(xet-core `remote_client.rs`): V2 reconstruction first, V1 on 404, then one GET per fetch_info entry with
exactly its `url_range` as `Range`, no Authorization, and a fresh reconstruction when a xorb URL answers 403.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from aiohttp import web

from ..repos import Blob, Repo
from ..server import cdn_error, token_of
from ..streaming import send_body
from .layout import Term, Xorb

if TYPE_CHECKING:
    from ..server import HubServer

_RECONSTRUCTION = re.compile(r"/v([12])/reconstructions/([^/]*)")
_XORB = re.compile(r"/xorbs/default/([0-9a-f]{64})")
_HASH = re.compile(r"[0-9a-f]{64}")
_RANGE = re.compile(r"bytes=(\d+)-(\d+)")  # the only Range form the OpenAPI allows here
URL_TTL = 3600


def cas_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class CasHandlers:
    def __init__(self, server: HubServer) -> None:
        self.server = server
        self.emu = server.emu

    @staticmethod
    def owns(raw_path: str) -> bool:
        return raw_path.startswith(("/v1/", "/v2/", "/xorbs/"))

    def subject_names(self, raw_path: str) -> list[str]:
        """The repo files a xorb URL was issued for, so `path_contains="weights"` matches xorb fetches too."""
        match = _XORB.fullmatch(raw_path)
        return self.emu.xet.names(match.group(1)) if match else []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.rel_url.raw_path
        if path == "/v1/telemetry" and request.method == "POST":
            await request.read()
            return web.json_response({})
        if request.method not in ("GET", "HEAD"):
            return cas_error(405, "Method Not Allowed")
        if match := _RECONSTRUCTION.fullmatch(path):
            if match.group(1) == "2":
                # Only V1 is emulated; hf_xet asks V2 first and falls back to V1 on 404 (or 501), remembering it.
                return cas_error(404, "Not Found")
            return self.reconstruction(request, match.group(2))
        if match := _XORB.fullmatch(path):
            return await self.xorb(request, match.group(1))
        return cas_error(404, "Not Found")

    # -- reconstruction ---------------------------------------------------------------------------

    def reconstruction(self, request: web.Request, file_id: str) -> web.Response:
        value = token_of(request)
        token = self.emu.xet.token(value) if value else None
        if token is None:
            return cas_error(401, "Unauthorized: missing or unknown token")
        if token.expires < time.time() or token.generation != self.emu.faults.cas_token_generation:
            return cas_error(401, "Unauthorized: token expired")
        if not _HASH.fullmatch(file_id):
            return cas_error(400, "Invalid file_id")
        repo = self.emu.get_repo(token.repo_type, token.repo_id)
        found = find_file(repo, file_id) if repo is not None else None
        if found is None:
            # A token only reaches its own repo's files; one held by another repo is a scope error.
            others = any(find_file(r, file_id) for r in self.emu.repos() if r is not repo)
            return cas_error(403, "Forbidden") if others else cas_error(404, "File not found")
        assert repo is not None
        path, blob = found
        layout = blob.xet
        assert layout is not None
        size = layout.size
        first, last = 0, size - 1
        header = request.headers.get("Range")
        if header is not None:
            match = _RANGE.fullmatch(header.strip())
            if match is None or int(match.group(2)) < int(match.group(1)):
                return cas_error(400, "Invalid Range")
            first, last = int(match.group(1)), min(int(match.group(2)), size - 1)
            if first >= size:
                return cas_error(416, "Range Not Satisfiable")
        if size == 0:
            return web.json_response({"offset_into_first_range": 0, "terms": [], "fetch_info": {}})
        offset, terms = layout.terms(first, last)
        name = f"{repo.url_prefix}{repo.repo_id}/{path}"
        return web.json_response(
            {
                "offset_into_first_range": offset,
                "terms": [
                    {"hash": t.xorb.hash, "unpacked_length": t.unpacked_length, "range": _range(t.start, t.end)}
                    for t in terms
                ],
                "fetch_info": self.fetch_info(terms, name),
            }
        )

    def fetch_info(self, terms: list[Term], name: str) -> dict[str, list[dict[str, Any]]]:
        """One entry per run of a xorb's chunks that the terms need, overlapping and adjacent ranges merged
        (as xet-core's reference server, `compute_reconstruction_ranges`, does): hf_xet matches a term to the
        first entry whose range reaches its start, so [0, 5) listed before [5, 9) would capture a [5, 9) term."""
        xorbs: dict[str, Xorb] = {}
        spans: dict[str, set[tuple[int, int]]] = {}
        for term in terms:
            xorbs.setdefault(term.xorb.hash, term.xorb)
            spans.setdefault(term.xorb.hash, set()).add((term.start, term.end))
        info: dict[str, list[dict[str, Any]]] = {}
        for digest, xorb in xorbs.items():
            self.emu.xet.remember(xorb, name)
            merged: list[list[int]] = []
            for start, end in sorted(spans[digest]):
                if merged and start <= merged[-1][1]:
                    merged[-1][1] = max(merged[-1][1], end)
                else:
                    merged.append([start, end])
            offsets = xorb.offsets
            entries = info[digest] = []
            for start, end in merged:
                first, last = offsets[start], offsets[end] - 1  # url_range's end is inclusive
                entries.append(
                    {
                        "range": _range(start, end),
                        "url": self.sign_xorb_url(digest, first, last),
                        "url_range": _range(first, last),
                    }
                )
        return info

    def sign_xorb_url(self, digest: str, first: int, last: int) -> str:
        url_path = f"/xorbs/default/{digest}"
        signed_range = f"bytes={first}-{last}"
        expires = int(time.time()) + URL_TTL
        signature = self.server._signature(f"{url_path}\n{signed_range}", expires, self.emu.faults.url_generation)
        query = urlencode({"X-Xet-Signed-Range": signed_range, "Expires": expires, "Signature": signature})
        return f"{self.emu.cdn_url}{url_path}?{query}"

    # -- xorb bytes -------------------------------------------------------------------------------

    async def xorb(self, request: web.Request, digest: str) -> web.StreamResponse:
        xorb = self.emu.xet.xorb(digest)
        if xorb is None:
            return cdn_error(404, "NoSuchKey", "The specified key does not exist.")
        signed_range = request.query.get("X-Xet-Signed-Range", "")
        refused = self.server.signature_error(request, f"{request.rel_url.raw_path}\n{signed_range}")
        if refused is not None:
            return refused
        # The signature covers one byte range; the CDN refuses any other (hf_xet then asks for new URLs).
        if request.headers.get("Range", "").strip() != signed_range:
            return cdn_error(403, "AccessDenied", "Range does not match the signed range")
        headers = {"Content-Type": "application/octet-stream", "Cache-Control": "public, max-age=604800, immutable"}
        subject = self.server.subject("cdn", request)
        return await send_body(request, xorb.body, headers, self.emu.faults, "cdn", subject)


def _range(start: int, end: int) -> dict[str, int]:
    return {"start": start, "end": end}


def find_file(repo: Repo | None, file_id: str) -> tuple[str, Blob] | None:
    """A path and blob of `repo` (any revision) whose Xet file hash is `file_id`."""
    if repo is None:
        return None
    for commit in list(repo.commits.values()):
        for path, blob in commit.files.items():
            if blob.lfs and blob.xet_hash == file_id:
                return path, blob
    return None
