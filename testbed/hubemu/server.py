"""aiohttp applications for the two origins: the Hub itself and the signed CDN it redirects LFS files to."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import mimetypes
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote, urlencode

from aiohttp import web

from .gitserver import GitHandlers, split_git_path
from .repos import API_SEGMENT, HEX40, Blob, Commit, Repo
from .streaming import send_body

if TYPE_CHECKING:
    from .emulator import HubEmulator

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
TYPE_OF_SEGMENT = {segment: repo_type for repo_type, segment in API_SEGMENT.items()}
TYPE_OF_PREFIX = {"datasets": "dataset", "spaces": "space"}
EXPOSED = (
    "X-Repo-Commit,X-Request-Id,X-Error-Code,X-Error-Message,X-Total-Count,ETag,Link,Accept-Ranges,"
    "Content-Range,X-Linked-Size,X-Linked-ETag,X-Xet-Hash"
)
_CDN_PATH = re.compile(r"/xet-bridge-us/([0-9a-f]+)/([0-9a-f]{64})")


class HubError(Exception):
    """Raised anywhere in a handler; becomes an error answer in the Hub's header + JSON shape."""

    def __init__(
        self, status: int, message: str, code: str | None = None, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = dict(headers or {})

    def response(self) -> web.Response:
        # Header values must be latin-1; the JSON body keeps the exact message.
        headers = {"X-Error-Message": self.message.encode("ascii", "replace").decode(), **self.headers}
        if self.code:
            headers["X-Error-Code"] = self.code
        return web.json_response({"error": self.message}, status=self.status, headers=headers)


def not_found() -> HubError:
    # Unknown routes, and methods a route lacks, get a plain 404 with no X-Error-Code, so the client
    # raises a bare HfHubHTTPError (no client or protocol note shows the Hub sending a 405 instead).
    return HubError(404, "Not Found")


def truthy(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true")


def encode_cursor(offset: int) -> str:
    """An opaque pagination cursor, as the Hub's `cursor=` values are (clients only copy the Link)."""
    return base64.urlsafe_b64encode(json.dumps({"o": offset}).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        offset = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))["o"]
    except (ValueError, KeyError, TypeError) as error:
        raise HubError(400, "Invalid cursor") from error
    if not isinstance(offset, int) or offset < 0:
        raise HubError(400, "Invalid cursor")
    return offset


def token_of(request: web.Request) -> str | None:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return (value.strip() or None) if scheme.lower() == "bearer" else None


def split_rev(segments: list[str]) -> tuple[str, list[str]]:
    """Take the revision off raw path segments; `refs/pr/N` may arrive encoded or as three segments."""
    if not segments:
        return "", []
    if unquote(segments[0]) == "refs" and len(segments) >= 3:
        return "refs/" + unquote(segments[1]) + "/" + unquote(segments[2]), segments[3:]
    return unquote(segments[0]), segments[1:]


def content_type(path: str) -> str:
    guessed = mimetypes.guess_type(path)[0] or "application/octet-stream"
    if guessed.startswith("text/") or guessed == "application/json":
        guessed += "; charset=utf-8"
    return guessed


def disposition(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    fallback = name.encode("ascii", "replace").decode().replace('"', "")
    return f"inline; filename*=UTF-8''{quote(name)}; filename=\"{fallback}\";"


def cdn_error(status: int, code: str, message: str) -> web.Response:
    body = f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message></Error>'
    return web.Response(status=status, text=body, content_type="application/xml")


class HubServer:
    """Request handlers; all state lives on the emulator so tests can mutate it between requests."""

    def __init__(self, emu: HubEmulator) -> None:
        self.emu = emu
        from .api import ApiHandlers  # api and the CAS import this module
        from .xet.cas import CasHandlers

        self.api = ApiHandlers(self)
        self.cas = CasHandlers(self)
        self.git = GitHandlers(self, emu.git_repos)

    # -- applications ---------------------------------------------------------------------------

    def hub_app(self) -> web.Application:
        return self._app("hub", self.handle_hub)

    def cdn_app(self) -> web.Application:
        return self._app("cdn", self.handle_cdn)

    def _app(self, origin: str, route: Handler) -> web.Application:
        @web.middleware
        async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
            self.emu._record(origin, request)
            faults = self.emu.faults
            if faults.is_down:
                if request.transport is not None:
                    request.transport.abort()
                return web.Response()  # never reaches the client; aiohttp drops it quietly
            subject = self.subject(origin, request)
            for rule in faults.take(("delay",), origin, request.method, subject):
                await asyncio.sleep(rule.value)
            rule = faults.take_status(origin, request.method, subject)
            if rule is not None:
                status = int(rule.value)
                message = f"Injected {status}"
                headers = {"X-Error-Message": message, **rule.headers}
                return web.json_response({"error": message}, status=status, headers=headers)
            try:
                return await handler(request)
            except HubError as error:
                return error.response()

        app = web.Application(middlewares=[middleware])
        # One catch-all route: aiohttp's router matches decoded paths, which would split on %2F.
        app.router.add_route("*", "/{tail:.*}", route)
        return app

    def subject(self, origin: str, request: web.Request) -> str:
        """The text fault rules match against (see Faults)."""
        path = unquote(request.rel_url.raw_path)
        if origin == "cdn" and (match := _CDN_PATH.fullmatch(request.rel_url.raw_path)):
            path += "\n" + "\n".join(sorted(self.emu._cdn_names.get(match.group(2), ())))
        elif origin == "cdn" and (names := self.cas.subject_names(request.rel_url.raw_path)):
            path += "\n" + "\n".join(names)
        return path

    # -- shared helpers ---------------------------------------------------------------------------

    def locate(self, repo_type: str, segments: list[str], fits: Callable[[list[str]], bool]) -> tuple[str, list[str]]:
        """Split `ns/name/...` or legacy `name/...` off raw segments, preferring a repo that exists."""
        options = [n for n in (2, 1) if len(segments) >= n and all(segments[:n]) and fits(segments[n:])]
        if not options:
            raise not_found()
        for n in options:
            repo_id = unquote("/".join(segments[:n]))
            if self.emu.get_repo(repo_type, repo_id) is not None:
                return repo_id, segments[n:]
        return unquote("/".join(segments[: options[0]])), segments[options[0] :]

    def visible_repo(self, request: web.Request, repo_type: str, repo_id: str) -> Repo:
        """The repo, unless it is missing or private to the caller (the Hub answers both alike)."""
        repo = self.emu.get_repo(repo_type, repo_id)
        if repo is None or (repo.private and token_of(request) not in repo.tokens):
            status = 404 if "Authorization" in request.headers else 401
            url = self.emu.url + request.rel_url.raw_path
            raise HubError(status, f"Repository Not Found for url: {url}.", "RepoNotFound")
        return repo

    def check_file_access(self, request: web.Request, repo: Repo) -> None:
        if not repo.gated:
            return
        token = token_of(request)
        if token in repo.tokens:
            return
        message = (
            f"Access to {repo.repo_type} {repo.repo_id} is restricted. You must have access to it "
            "and be authenticated to access it. Please log in."
        )
        raise HubError(401 if token is None else 403, message, "GatedRepo")

    def commit_of(self, repo: Repo, rev: str) -> Commit:
        commit = repo.resolve(rev) if rev else None
        if commit is None:
            raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return commit

    # -- hub origin ------------------------------------------------------------------------------

    async def handle_hub(self, request: web.Request) -> web.StreamResponse:
        # Route on the raw path: revisions and tree paths carry %2F that must not split segments.
        segments = request.rel_url.raw_path.split("/")[1:]
        if segments[0] == "api":
            if segments[1:2] == ["resolve-cache"]:
                return await self.resolve_cache(request, segments[2:])
            return await self.api.dispatch(request, segments[1:])
        repo_type = TYPE_OF_PREFIX.get(segments[0], "model")
        if repo_type != "model":
            segments = segments[1:]
        if (git_route := split_git_path(segments)) is not None:
            return await self.git.handle(request, repo_type, *git_route)
        if request.method not in ("GET", "HEAD"):
            raise not_found()
        repo_id, rest = self.locate(repo_type, segments, lambda rest: len(rest) >= 2 and rest[0] == "resolve")
        rev, path_segments = split_rev(rest[1:])
        path = unquote("/".join(path_segments))
        repo = self.visible_repo(request, repo_type, repo_id)
        self.check_file_access(request, repo)
        commit = self.commit_of(repo, rev)
        blob = commit.files.get(path)
        if blob is None:
            raise HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit.sha})
        if blob.lfs:
            return self.lfs_redirect(repo, commit, path, blob)
        if rev != commit.sha:
            return self.cache_redirect(repo, commit, rev, path, blob)
        return await self.serve_plain(request, commit, path, blob)

    async def resolve_cache(self, request: web.Request, segments: list[str]) -> web.StreamResponse:
        repo_type = TYPE_OF_SEGMENT.get(segments[0]) if segments else None
        if repo_type is None or request.method not in ("GET", "HEAD"):
            raise not_found()
        repo_id, rest = self.locate(repo_type, segments[1:], lambda rest: len(rest) >= 2)
        repo = self.visible_repo(request, repo_type, repo_id)
        self.check_file_access(request, repo)
        rev = unquote(rest[0])
        if not HEX40.fullmatch(rev):
            # The Hub only serves this route for commit-pinned URLs.
            raise HubError(400, f"Invalid commit: {rev}")
        commit = self.commit_of(repo, rev)
        path = unquote("/".join(rest[1:]))
        blob = commit.files.get(path)
        if blob is None:
            raise HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit.sha})
        return await self.serve_plain(request, commit, path, blob)

    async def serve_plain(self, request: web.Request, commit: Commit, path: str, blob: Blob) -> web.StreamResponse:
        headers = {
            "ETag": f'"{blob.oid}"',
            "X-Repo-Commit": commit.sha,
            "Content-Type": content_type(path),
            "Content-Disposition": disposition(path),
            "Access-Control-Expose-Headers": EXPOSED,
        }
        return await send_body(request, blob.content, headers, self.emu.faults, "hub", self.subject("hub", request))

    def cache_redirect(self, repo: Repo, commit: Commit, rev: str, path: str, blob: Blob) -> web.Response:
        """The Hub's 307 from a branch URL to a commit-pinned, cacheable URL (relative Location)."""
        original = f"/{repo.url_prefix}{repo.repo_id}/resolve/{rev}/{path}"
        location = (
            f"/api/resolve-cache/{repo.api_segment}/{repo.repo_id}/{commit.sha}/{quote(path)}"
            f"?{quote(original, safe='')}=&etag=%22{blob.oid}%22"
        )
        headers = {
            "Location": location,
            "X-Repo-Commit": commit.sha,
            "ETag": f'"{blob.oid}"',
            "Access-Control-Expose-Headers": EXPOSED,
        }
        return web.Response(
            status=307,
            text=f"Temporary Redirect. Redirecting to {location}",
            content_type="text/plain",
            charset="utf-8",
            headers=headers,
        )

    def lfs_redirect(self, repo: Repo, commit: Commit, path: str, blob: Blob) -> web.Response:
        assert blob.sha256 is not None and blob.xet_hash is not None and blob.pointer is not None
        location = self.sign_cdn_url(repo, path, blob)
        api = f"{self.emu.url}/api/{repo.api_segment}/{repo.repo_id}"
        headers = {
            "Location": location,
            "X-Repo-Commit": commit.sha,
            "X-Linked-Etag": f'"{blob.sha256}"',
            "X-Linked-Size": str(blob.size),
            "ETag": f'"{blob.oid}"',
            "X-Xet-Hash": blob.xet_hash,
            "Link": (
                f'<{api}/xet-read-token/{commit.sha}>; rel="xet-auth", '
                f'<{self.emu.cdn_url}/v1/reconstructions/{blob.xet_hash}>; rel="xet-reconstruction-info"'
            ),
            "Accept-Ranges": "bytes",
            "Access-Control-Expose-Headers": EXPOSED,
        }
        return web.Response(
            status=302,
            text=f"Found. Redirecting to {location}",
            content_type="text/plain",
            charset="utf-8",
            headers=headers,
        )

    # -- cdn origin ------------------------------------------------------------------------------

    def _signature(self, path: str, expires: int, generation: int) -> str:
        message = f"{path}\n{expires}\n{generation}".encode()
        return hmac.new(self.emu._secret, message, hashlib.sha256).hexdigest()

    def sign_cdn_url(self, repo: Repo, path: str, blob: Blob) -> str:
        assert blob.sha256 is not None
        self.emu._publish(blob, f"{repo.url_prefix}{repo.repo_id}/{path}")
        repo_hash = hashlib.sha256(f"{repo.repo_type}/{repo.repo_id}".encode()).hexdigest()[:16]
        url_path = f"/xet-bridge-us/{repo_hash}/{blob.sha256}"
        expires = int(time.time()) + 3600
        query = urlencode(
            {
                "response-content-disposition": disposition(path),
                "Expires": expires,
                "Signature": self._signature(url_path, expires, self.emu.faults.url_generation),
                "Key-Pair-Id": "K",
            }
        )
        return f"{self.emu.cdn_url}{url_path}?{query}"

    def signature_error(self, request: web.Request, signed: str) -> web.Response | None:
        """The CDN's 403 for a URL whose `Expires`/`Signature` do not sign `signed`, or that has expired."""
        try:
            expires = int(request.query.get("Expires", ""))
        except ValueError:
            return cdn_error(403, "AccessDenied", "Missing Expires")
        signature = request.query.get("Signature", "")
        current = self.emu.faults.url_generation
        valid = [
            generation
            for generation in range(current + 1)
            if hmac.compare_digest(self._signature(signed, expires, generation), signature)
        ]
        if not valid:
            return cdn_error(403, "AccessDenied", "Invalid signature")
        if valid[0] != current or expires < time.time():
            return cdn_error(403, "AccessDenied", "Request has expired")
        return None

    async def handle_cdn(self, request: web.Request) -> web.StreamResponse:
        if self.cas.owns(request.rel_url.raw_path):
            return await self.cas.handle(request)
        if request.method not in ("GET", "HEAD"):
            return cdn_error(405, "MethodNotAllowed", "Method not allowed")
        match = _CDN_PATH.fullmatch(request.rel_url.raw_path)
        blob = self.emu._cdn_blobs.get(match.group(2)) if match else None
        if match is None or blob is None:
            return cdn_error(404, "NoSuchKey", "The specified key does not exist.")
        refused = self.signature_error(request, request.rel_url.raw_path)
        if refused is not None:
            return refused
        assert blob.xet_hash is not None
        headers = {
            "ETag": f'"{blob.xet_hash}"',
            "Content-Type": "application/octet-stream",
            "Content-Disposition": request.query.get("response-content-disposition", "attachment"),
            "Cache-Control": "public, max-age=604800, immutable",
        }
        return await send_body(request, blob.content, headers, self.emu.faults, "cdn", self.subject("cdn", request))
