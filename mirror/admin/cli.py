"""`hub-mirror allow|sync|status`: the admin API from a terminal."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from mirror.admin.client import AdminClient, AdminClientError, ExitCode

DEFAULT_URL = "http://127.0.0.1:8090"
BAR_WIDTH = 30
STATUS_JOBS = 10
STATUS_ERRORS_PER_JOB = 3


def add_admin_parsers(sub: Any) -> None:
    def common(parser: argparse.ArgumentParser) -> None:
        # SUPPRESS: no default here, so `allow --url X list` and `allow list --url X` both work (a
        # subparser's default would overwrite the value given before it); mirror_url() decides.
        parser.add_argument(
            "--url", default=argparse.SUPPRESS, help=f"mirror URL (default: $HUB_MIRROR_URL, else {DEFAULT_URL})"
        )
        parser.add_argument(
            "--token",
            default=argparse.SUPPRESS,
            help="admin token (default: $HUB_MIRROR_ADMIN_TOKEN, which keeps it out of the process list)",
        )

    allow = sub.add_parser("allow", help="manage the allow-list of a running mirror")
    common(allow)
    allow_sub = allow.add_subparsers(dest="allow_command", required=True)
    common(allow_sub.add_parser("list", help="show the allow-list"))
    add = allow_sub.add_parser("add", help="add an entry")
    common(add)
    add.add_argument("pattern", help="repo id or glob, e.g. 'Qwen/Qwen3-VL-*'")
    add.add_argument("--type", dest="repo_type", default="model", choices=("model", "dataset", "space"))
    add.add_argument("--revision", dest="revisions", action="append", help="branch, tag or commit (repeatable)")
    add.add_argument("--every", dest="sync_interval", default="6h", help="sync interval, e.g. 30m, 6h, 1d")
    add.add_argument("--include", action="append", default=[], help="file glob to mirror (repeatable)")
    add.add_argument("--exclude", action="append", default=[], help="file glob to skip (repeatable)")
    remove = allow_sub.add_parser("remove", help="remove an entry by id")
    common(remove)
    remove.add_argument("id")

    sync = sub.add_parser("sync", help="sync allow-listed repos now, with progress")
    common(sync)
    sync.add_argument("repo", nargs="?", help="one repo (default: every allow-list entry)")
    sync.add_argument("--type", dest="repo_type", choices=("model", "dataset", "space"))
    sync.add_argument("--no-wait", action="store_true", help="start the job and return")

    common(sub.add_parser("status", help="allow-list, recent sync jobs and cached repos"))


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _bar(done: int, total: int) -> str:
    fraction = done / total if total else 1.0
    filled = int(BAR_WIDTH * fraction)
    return f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {fraction * 100:5.1f}%"


def _print_entries(entries: list[dict[str, Any]]) -> None:
    if not entries:
        print("allow-list is empty")
    for e in entries:
        filters = (f" include={','.join(e['include'])}" if e["include"] else "") + (
            f" exclude={','.join(e['exclude'])}" if e["exclude"] else ""
        )
        print(
            f"{e['id']}  {e['repo_type']:<7} {e['pattern']:<40} revisions={','.join(e['revisions'])} "
            f"every={e['sync_interval']}{filters}"
        )


def _follow(client: AdminClient, job_id: str, out: Any) -> dict[str, Any]:
    """Poll a job, drawing one bar per file and one overall, until it ends."""
    tty = out.isatty()
    finished: set[str] = set()
    while True:
        job = client.call("GET", f"/admin/sync/{job_id}")
        for target in job["targets"]:
            for f in target["files"]:
                key = f"{target['repo']}@{target['revision']}/{f['path']}"
                if f["state"] in ("done", "cached", "failed") and key not in finished:
                    finished.add(key)
                    mark = {"done": "downloaded", "cached": "cached", "failed": f"FAILED: {f['error']}"}[f["state"]]
                    print(f"\r{_bar(f['done'], f['size'])} {key} ({_human(f['size'])}) {mark}", file=out)
                elif tty and f["state"] == "downloading":
                    print(f"\r{_bar(f['done'], f['size'])} {key}", end="", file=out, flush=True)
        overall = f"overall {_bar(job['bytes_done'], job['bytes_total'])} {_human(job['bytes_done'])}"
        if job["state"] in ("succeeded", "failed"):
            print(f"\r{overall} / {_human(job['bytes_total'])}: {job['state']}", file=out)
            return job
        if tty:
            print(f"\r{overall}", end="", file=out, flush=True)
        time.sleep(0.5)


def mirror_url(args: argparse.Namespace) -> str:
    """--url, else $HUB_MIRROR_URL, else DEFAULT_URL; an empty value counts as unset."""
    return getattr(args, "url", None) or os.environ.get("HUB_MIRROR_URL") or DEFAULT_URL


def admin_token(args: argparse.Namespace) -> str | None:
    """--token, else $HUB_MIRROR_ADMIN_TOKEN (the variable the mirror itself reads); empty counts as unset."""
    return getattr(args, "token", None) or os.environ.get("HUB_MIRROR_ADMIN_TOKEN") or None


def run_admin(args: argparse.Namespace) -> int:
    """Run one admin subcommand; every failure is one `hub-mirror: ...` line and an ExitCode."""
    url = mirror_url(args)
    try:
        client = AdminClient(url, admin_token(args))
        if args.command == "allow":
            return _allow(client, args)
        if args.command == "sync":
            return _sync(client, args)
        if args.command == "status":
            return _status(client)
    except AdminClientError as exc:
        print(f"hub-mirror: {exc}", file=sys.stderr)
        return exc.exit_code
    except (KeyError, TypeError, AttributeError, IndexError) as exc:
        # JSON that is not the admin API's shape: --url points at some other service.
        print(
            f"hub-mirror: unexpected answer from {url} ({type(exc).__name__}: {exc}); is --url the mirror?",
            file=sys.stderr,
        )
        return ExitCode.MIRROR_ERROR
    return ExitCode.USAGE


def _allow(client: AdminClient, args: argparse.Namespace) -> int:
    if args.allow_command == "list":
        _print_entries(client.call("GET", "/admin/allowlist"))
    elif args.allow_command == "add":
        body = {
            "repo_type": args.repo_type,
            "pattern": args.pattern,
            "revisions": args.revisions or ["main"],
            "sync_interval": args.sync_interval,
            "include": args.include,
            "exclude": args.exclude,
        }
        entry = client.call("POST", "/admin/allowlist", body)
        print(f"added {entry['id']}: {entry['repo_type']} {entry['pattern']}")
    else:
        client.call("DELETE", f"/admin/allowlist/{args.id}")
        print(f"removed {args.id}")
    return ExitCode.OK


def _sync(client: AdminClient, args: argparse.Namespace) -> int:
    body = {k: v for k, v in (("repo_type", args.repo_type), ("repo", args.repo)) if v is not None}
    job = client.call("POST", "/admin/sync", body)
    print(f"sync job {job['id']} queued")
    if args.no_wait:
        return ExitCode.OK
    try:
        job = _follow(client, job["id"], sys.stdout)
    except KeyboardInterrupt:
        # Only the watching stops: the job runs on the mirror, not in this process.
        print(f"\nhub-mirror: stopped following sync job {job['id']}; it goes on (hub-mirror status)", file=sys.stderr)
        return ExitCode.INTERRUPTED
    for error in job["errors"]:
        print(f"error: {error}", file=sys.stderr)
    return ExitCode.OK if job["state"] == "succeeded" else ExitCode.SYNC_FAILED


def _status(client: AdminClient) -> int:
    # Everything is asked first: a failure then prints one error line, not half a report.
    entries = client.call("GET", "/admin/allowlist")
    jobs = client.call("GET", "/admin/sync")[:STATUS_JOBS]
    repos = client.call("GET", "/admin/repos")
    usage = client.call("GET", "/admin/usage")
    print("allow-list:")
    _print_entries(entries)
    print("\nrecent sync jobs:")
    for job in jobs:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job["created_at"]))
        errors = job["errors"]
        print(
            f"{job['id']}  {when}  {job['state']:<9} {job['trigger']:<8} "
            f"{_human(job['bytes_done'])}/{_human(job['bytes_total'])}  errors={len(errors)}"
        )
        # A count alone leaves the operator to dig through the API; a failed job with many
        # failed files would flood the screen, so the rest is only counted.
        for error in errors[:STATUS_ERRORS_PER_JOB]:
            print(f"    error: {error}")
        if len(errors) > STATUS_ERRORS_PER_JOB:
            print(f"    ... {len(errors) - STATUS_ERRORS_PER_JOB} more (GET /admin/sync/{job['id']})")
    print("\ncached repos:")
    for repo in repos:
        revs = ", ".join(f"{r}={c[:10]}" for r, c in repo["revisions"].items())
        last = repo.get("last_access")
        read = time.strftime("%Y-%m-%d %H:%M", time.localtime(last)) if last else "never"
        pinned = "  pinned" if repo.get("pinned") else ""
        print(
            f"{repo['repo_type']:<7} {repo['repo']:<40} {repo['files']} files {repo['blobs']} blobs "
            f"{_human(repo['bytes'])}  last read {read}{pinned}  {revs}"
        )
    limit = f" of {_human(usage['max_bytes'])}" if usage["max_bytes"] else " (no limit)"
    print(
        f"\nstorage: {usage['blobs']} blobs, {_human(usage['bytes'])}{limit}; "
        f"pinned {_human(usage['pinned_bytes'])}"
    )
    if usage["pinned_over_limit"]:
        print("warning: pinned blobs alone exceed cache.max_bytes; they are kept (raise the limit or pin less)")
    return ExitCode.OK
