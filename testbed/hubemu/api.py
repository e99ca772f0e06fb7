"""The JSON `/api/...` endpoints of the Hub origin."""

from __future__ import annotations

import hashlib
import json
from typing import Any
from urllib.parse import quote, unquote, urlencode

from aiohttp import web

from .listing import list_repos
from .repos import Commit, Repo, iso
from .server import (
    TYPE_OF_SEGMENT,
    HubError,
    HubServer,
    decode_cursor,
    encode_cursor,
    not_found,
    split_rev,
    token_of,
    truthy,
)
from .shapes import repo_data

SUBROUTES = ("revision", "tree", "treesize", "paths-info", "refs", "commits", "auth-check", "xet-read-token")
ROUTES = {
    ("", "GET"),
    ("revision", "GET"),
    ("tree", "GET"),
    ("treesize", "GET"),
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
# The body types a web server (the Hub's included) decodes into form fields; any other body is
# opaque to it. aiohttp labels a plain `str` body `text/plain`, which is how a mirror once sent a
# paths-info form the Hub never read (see paths_info_fields).
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
JSON_TYPE = "application/json"
MAX_COMMITS_PAGE = 1000


async def paths_info_fields(request: web.Request) -> tuple[list[str], bool]:
    """`paths` and `expand` of a paths-info POST, read only as its Content-Type says.

    A form (what huggingface_hub sends: repeated `paths=` and `expand=true|false`) or a JSON object
    are decoded; a body with any other label, or none, has no fields, so it asks for no paths and
    gets `[]`, which is what the Hub answered the mirror's `text/plain` form.
    Undecodable forms or JSON are a 400, as a body parser refuses them.
    """
    if request.content_type in FORM_TYPES:
        try:
            form = await request.post()
        except (ValueError, UnicodeDecodeError) as error:
            raise HubError(400, "Invalid form body") from error
        paths = [value for value in form.getall("paths", []) if isinstance(value, str)]
        expand = form.get("expand")
        return paths, isinstance(expand, str) and truthy(expand)
    body = await request.read()
    if request.content_type != JSON_TYPE:
        return [], False
    try:
        parsed = json.loads(body) if body.strip() else {}
    except (ValueError, UnicodeDecodeError) as error:
        raise HubError(400, "Invalid JSON body") from error
    if isinstance(parsed, list):
        return [], False  # valid JSON, but no named fields in it
    if not isinstance(parsed, dict):
        raise HubError(400, "Invalid JSON body: expected an object")
    paths = parsed.get("paths", [])
    if isinstance(paths, str):
        paths = [paths]
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise HubError(400, "paths must be a list of strings")
    expand = parsed.get("expand", False)
    return paths, expand is True or (isinstance(expand, str) and truthy(expand))


class ApiHandlers:
    def __init__(self, server: HubServer) -> None:
        self.server = server
        self.emu = server.emu

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
        if len(segments) == 1:
            if not reads:
                raise not_found()
            return list_repos(self.emu, request, repo_type)
        repo_id, rest = self.server.locate(repo_type, segments[1:], lambda rest: not rest or rest[0] in SUBROUTES)
        route = rest[0] if rest else ""
        args = rest[1:]
        # HEAD is answered like GET (aiohttp drops the body), as the Hub does.
        if (route, "GET" if method == "HEAD" else method) not in ROUTES:
            raise not_found()
        if (route == "refs" and args) or (route == "auth-check" and args not in ([], ["write"])):
            raise not_found()  # these take no revision: `refs/main` is no route on the Hub
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
        if route == "treesize":
            rev, path_segments = split_rev(args)
            return self.treesize(repo, rev, unquote("/".join(path_segments)))
        if route == "paths-info":
            # The body is parsed before the revision is resolved, as a server's body parser runs first.
            paths, expand = await paths_info_fields(request)
            return self.paths_info(self.server.commit_of(repo, whole_rev), paths, expand)
        if route == "refs":
            return self.refs(request, repo)
        if route == "commits":
            return self.commits(request, repo, whole_rev)
        self.server.check_file_access(request, repo)
        if route == "auth-check":
            if args == ["write"]:
                # Emulator tokens are read tokens (whoami says role "read"), so none may write.
                raise HubError(403, f"You don't have write access to {repo.repo_type} {repo.repo_id}")
            return web.json_response({})
        return self.xet_token(repo, self.server.commit_of(repo, whole_rev))

    # -- repo info -------------------------------------------------------------------------------

    def info(self, request: web.Request, repo: Repo, commit: Commit) -> web.Response:
        data = repo_data(repo, commit, blobs=truthy(request.query.get("blobs")))
        if truthy(request.query.get("securityStatus")):
            data["securityRepoStatus"] = {"scansDone": True, "filesWithIssues": []}
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

    def paths_info(self, commit: Commit, paths: list[str], expand: bool) -> web.Response:
        seen: set[str] = set()
        entries = []
        for raw in paths:
            path = raw.strip("/")
            if path not in seen and (path in commit.files or (path and path in commit.dir_oids)):
                seen.add(path)
                entries.append(self.entry(commit, path, expand))
        return web.json_response(entries)

    def treesize(self, repo: Repo, rev: str, path: str) -> web.Response:
        """`GET /api/{type}/{repo}/treesize/{rev}[/{path}]`: `{"path": path, "size": bytes}`.

        No huggingface_hub call uses it; hfd.sh reads only `.size`, the total bytes of the files under
        the path (LFS files count their content, not their pointer), to check the siblings' sizes add
        up. The path may come `%2F`-encoded or as plain segments, like the tree's. A file path gives its
        own size; a path that does not exist is a 404 EntryNotFound, as for the tree.
        """
        commit = self.server.commit_of(repo, rev)
        path = path.strip("/")
        blob = commit.files.get(path)
        if blob is not None:
            size = blob.size
        elif not path or path in commit.dir_oids:
            prefix = f"{path}/" if path else ""
            size = sum(b.size for p, b in commit.files.items() if p.startswith(prefix))
        else:
            raise HubError(404, f'{path} does not exist on "{rev}"', "EntryNotFound", {"X-Repo-Commit": commit.sha})
        return web.json_response({"path": path, "size": size})

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
        page = self.whole_number(request, "p", 0)
        # `limit` sets the page size (capped); a page past the end is an empty list, not an error.
        size = min(self.whole_number(request, "limit", self.emu.commits_page_size), MAX_COMMITS_PAGE)
        if size == 0:
            raise HubError(400, "Invalid limit: 0")
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

    @staticmethod
    def whole_number(request: web.Request, name: str, default: int) -> int:
        value = request.query.get(name)
        if value is None:
            return default
        if not (value.isascii() and value.isdigit()):
            raise HubError(400, f"Invalid {name}: {value[:50]}")
        return int(value)

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
        """A short-lived CAS token for this repo (the caller already passed the repo's visibility and gate
        checks): the JSON body xet-core reads (`CasJWTInfo`) and the headers huggingface_hub reads."""
        del commit  # resolved only to 404 unknown revisions; the token covers the repo, as the CAS scopes it
        token, expires = self.emu.xet.issue(repo.repo_type, repo.repo_id, self.emu.faults.cas_token_generation)
        headers = {
            "X-Xet-Cas-Url": self.emu.cdn_url,
            "X-Xet-Access-Token": token,
            "X-Xet-Token-Expiration": str(expires),
        }
        return web.json_response({"casUrl": self.emu.cdn_url, "accessToken": token, "exp": expires}, headers=headers)
