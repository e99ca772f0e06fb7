"""The JSON `/api/...` endpoints of the Hub origin."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode

from aiohttp import web

from .repos import EPOCH, Commit, Repo, iso
from .server import TYPE_OF_SEGMENT, HubError, HubServer, not_found, split_rev, token_of

SUBROUTES = ("revision", "tree", "paths-info", "refs", "commits", "auth-check", "xet-read-token")
ROUTES = {
    ("", "GET"),
    ("revision", "GET"),
    ("tree", "GET"),
    ("paths-info", "POST"),
    ("refs", "GET"),
    ("commits", "GET"),
    ("auth-check", "GET"),
    ("xet-read-token", "GET"),
}
SECURITY_STATUS = {
    "status": "safe",
    "avScan": {"status": "safe"},
    "pickleImportScan": {"status": "unscanned"},
}


def truthy(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true")


def encode_cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"o": offset}).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        offset = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))["o"]
    except (ValueError, KeyError, TypeError) as error:
        raise HubError(400, "Invalid cursor") from error
    if not isinstance(offset, int) or offset < 0:
        raise HubError(400, "Invalid cursor")
    return offset


class ApiHandlers:
    def __init__(self, server: HubServer) -> None:
        self.server = server
        self.emu = server.emu

    def list_repos(self, request: web.Request, repo_type: str) -> web.Response:
        """`GET /api/models?author=org[&search=text]`: public repos, like the Hub's listing (one page)."""
        author = request.query.get("author")
        search = request.query.get("search", "")
        found = [
            {"id": repo.repo_id, "_id": repo.repo_id, "private": repo.private, "gated": repo.gated}
            for repo in self.emu.repos()
            if repo.repo_type == repo_type
            and not repo.private
            and (author is None or repo.repo_id.split("/")[0] == author)
            and search in repo.repo_id
        ]
        return web.json_response(sorted(found, key=lambda r: str(r["id"])))

    async def dispatch(self, request: web.Request, segments: list[str]) -> web.StreamResponse:
        head = segments[0] if segments else ""
        method = request.method
        reads = method in ("GET", "HEAD")
        if head == "whoami-v2" and len(segments) == 1 and reads:
            return self.whoami(request)
        if head == "agent-harnesses" and len(segments) == 1 and reads:
            return web.json_response({"standardEnvVars": [], "harnesses": {}})
        repo_type = TYPE_OF_SEGMENT.get(head)
        if repo_type is None:
            raise not_found()
        if len(segments) == 1 and reads:
            return self.list_repos(request, repo_type)
        repo_id, rest = self.server.locate(repo_type, segments[1:], lambda rest: not rest or rest[0] in SUBROUTES)
        route = rest[0] if rest else ""
        args = rest[1:]
        # HEAD is answered like GET (aiohttp drops the body), as the Hub does.
        if (route, "GET" if method == "HEAD" else method) not in ROUTES:
            raise not_found()
        repo = self.server.visible_repo(request, repo_type, repo_id)
        # Unlike resolve, a rev here may contain unencoded "/" (e.g. `revision/refs/pr/1`): join the rest.
        whole_rev = unquote("/".join(args))
        if route == "":
            return self.info(request, repo, self.server.commit_of(repo, "main"))
        if route == "revision":
            return self.info(request, repo, self.server.commit_of(repo, whole_rev))
        if route == "tree":
            rev, path_segments = split_rev(args)
            return self.tree(request, repo, rev, unquote("/".join(path_segments)))
        if route == "paths-info":
            return await self.paths_info(request, repo, self.server.commit_of(repo, whole_rev))
        if route == "refs":
            return self.refs(request, repo)
        if route == "commits":
            return self.commits(request, repo, whole_rev)
        self.server.check_file_access(request, repo)
        if route == "auth-check":
            return web.json_response({})
        return self.xet_token(repo, self.server.commit_of(repo, whole_rev))

    # -- repo info -------------------------------------------------------------------------------

    def info(self, request: web.Request, repo: Repo, commit: Commit) -> web.Response:
        with_blobs = truthy(request.query.get("blobs"))
        siblings = []
        for path, blob in commit.files.items():
            sibling: dict[str, Any] = {"rfilename": path}
            if with_blobs:
                sibling.update(size=blob.size, blobId=blob.oid)
                if blob.pointer is not None:
                    sibling["lfs"] = {
                        "size": blob.size,
                        "sha256": blob.sha256,
                        "pointerSize": len(blob.pointer),
                    }
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
        expand = request.query.getall("expand", [])
        if expand:
            # Like the Hub, `expand` selects the returned properties instead of adding to them.
            data = {key: value for key, value in data.items() if key in ("_id", "id", *expand)}
        return web.json_response(data)

    # -- listings --------------------------------------------------------------------------------

    def entry(self, commit: Commit, path: str, expand: bool) -> dict[str, Any]:
        blob = commit.files.get(path)
        if blob is None:
            entry: dict[str, Any] = {
                "type": "directory",
                "oid": commit.dir_oids[path],
                "size": 0,
                "path": path,
            }
        else:
            entry = {"type": "file", "oid": blob.oid, "size": blob.size, "path": path}
            if blob.pointer is not None:
                entry["lfs"] = {"oid": blob.sha256, "size": blob.size, "pointerSize": len(blob.pointer)}
                entry["xetHash"] = blob.xet_hash
        if expand:
            last = commit.last_change(path)
            entry["lastCommit"] = {"id": last.sha, "title": last.title, "date": iso(last.date)}
            if blob is not None:
                entry["securityFileStatus"] = SECURITY_STATUS
        return entry

    def tree(self, request: web.Request, repo: Repo, rev: str, path: str) -> web.Response:
        commit = self.server.commit_of(repo, rev)
        path = path.strip("/")
        if path and path not in commit.dir_oids:
            raise HubError(404, f'{path} does not exist on "{rev}"', "EntryNotFound", {"X-Repo-Commit": commit.sha})
        recursive = truthy(request.query.get("recursive"))
        expand = truthy(request.query.get("expand"))
        prefix = f"{path}/" if path else ""
        paths = sorted(
            p
            for p in (*commit.files, *commit.dir_oids)
            if p and p.startswith(prefix) and (recursive or "/" not in p[len(prefix) :])
        )
        page_size = self.emu.expand_page_size if expand else self.emu.page_size
        offset = decode_cursor(request.query["cursor"]) if "cursor" in request.query else 0
        page = paths[offset : offset + page_size]
        headers = {}
        if offset + page_size < len(paths):
            url = f"{self.emu.url}/api/{repo.api_segment}/{repo.repo_id}/tree/{quote(rev, safe='')}"
            if path:
                url += "/" + quote(path, safe="")
            query = urlencode(
                {
                    "recursive": str(recursive).lower(),
                    "expand": str(expand).lower(),
                    "cursor": encode_cursor(offset + page_size),
                }
            )
            headers["Link"] = f'<{url}?{query}>; rel="next"'
        return web.json_response([self.entry(commit, p, expand) for p in page], headers=headers)

    async def paths_info(self, request: web.Request, repo: Repo, commit: Commit) -> web.Response:
        body = await request.read()
        if request.content_type == "application/json":
            parsed = json.loads(body or b"{}")
            paths, expand = list(parsed.get("paths", [])), bool(parsed.get("expand"))
        else:
            pairs = parse_qsl(body.decode(), keep_blank_values=True)
            paths = [value for key, value in pairs if key == "paths"]
            expand = any(key == "expand" and truthy(value) for key, value in pairs)
        seen: set[str] = set()
        entries = []
        for raw in paths:
            path = raw.strip("/")
            if path not in seen and (path in commit.files or (path and path in commit.dir_oids)):
                seen.add(path)
                entries.append(self.entry(commit, path, expand))
        return web.json_response(entries)

    def refs(self, request: web.Request, repo: Repo) -> web.Response:
        branches, tags, prs = repo.refs()
        data: dict[str, Any] = {
            "branches": [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": c} for n, c in sorted(branches.items())],
            "converts": [],
            "tags": [{"name": n, "ref": f"refs/tags/{n}", "targetCommit": c} for n, c in sorted(tags.items())],
        }
        if truthy(request.query.get("include_prs")):
            data["pullRequests"] = [
                {"name": f"refs/pr/{n}", "ref": f"refs/pr/{n}", "targetCommit": c} for n, c in sorted(prs.items())
            ]
        return web.json_response(data)

    def commits(self, request: web.Request, repo: Repo, rev: str) -> web.Response:
        history = list(self.server.commit_of(repo, rev).history())
        try:
            page = int(request.query.get("p", "0"))
        except ValueError as error:
            raise HubError(400, "Invalid page") from error
        size = self.emu.commits_page_size
        formatted = "formatted" in request.query.getall("expand[]", [])
        items = []
        for commit in history[page * size : (page + 1) * size]:
            item: dict[str, Any] = {
                "id": commit.sha,
                "authors": [{"user": "emulator"}],
                "date": iso(commit.date),
                "title": commit.title,
                "message": commit.message,
            }
            if formatted:
                item["formatted"] = {"title": f"<p>{commit.title}</p>", "message": f"<p>{commit.message}</p>"}
            items.append(item)
        headers = {}
        if (page + 1) * size < len(history):
            params = [(k, v) for k, v in request.query.items() if k != "p"] + [("p", str(page + 1))]
            url = f"{self.emu.url}/api/{repo.api_segment}/{repo.repo_id}/commits/{quote(rev, safe='')}"
            headers["Link"] = f'<{url}?{urlencode(params)}>; rel="next"'
        return web.json_response(items, headers={**headers, "X-Total-Count": str(len(history))})

    # -- auth ------------------------------------------------------------------------------------

    def whoami(self, request: web.Request) -> web.Response:
        token = token_of(request)
        name = self.emu.user_for(token) if token else None
        if name is None:
            raise HubError(401, "Invalid user token.")
        return web.json_response(
            {
                "type": "user",
                "id": hashlib.sha1(name.encode()).hexdigest()[:24],
                "name": name,
                "fullname": name,
                "orgs": [],
                "auth": {"type": "access_token", "accessToken": {"displayName": "emulator", "role": "read"}},
            }
        )

    def xet_token(self, repo: Repo, commit: Commit) -> web.Response:
        expires = int(time.time()) + 3600
        token = hashlib.sha256(f"{repo.repo_id}/{commit.sha}/{expires}".encode()).hexdigest()
        headers = {
            "X-Xet-Cas-Url": self.emu.cdn_url,
            "X-Xet-Access-Token": token,
            "X-Xet-Token-Expiration": str(expires),
        }
        return web.json_response({"casUrl": self.emu.cdn_url, "accessToken": token, "exp": expires}, headers=headers)
