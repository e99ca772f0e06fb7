"""Command line: `hub-mirror serve`."""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from mirror import __version__
from mirror.admin.cli import add_admin_parsers, run_admin
from mirror.app import create_app
from mirror.config import LOG_FORMATS, LOG_LEVELS, ConfigError, load_config
from mirror.lifecycle.cli import add_lifecycle_parsers, run_lifecycle
from mirror.lifecycle.offline import add_storage_args, storage_overrides
from mirror.logs import setup_logging
from mirror.runtime import tune_allocator
from mirror.smoke.cli import add_smoke_parser, run_smoke


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hub-mirror", description="Hugging Face Hub mirror proxy")
    parser.add_argument("--version", action="version", version=f"hub-mirror {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the mirror server")
    add_storage_args(serve)  # --config, --cache-dir, --storage, --s3-*: as for the offline commands
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8090)")
    serve.add_argument("--upstream", help="upstream Hub URL (default https://huggingface.co)")
    serve.add_argument(
        "--log-format", choices=LOG_FORMATS, help="log line format: text (default) or json (one object per line)"
    )
    serve.add_argument(
        "--enforce-allowlist",
        action="store_const",
        const=True,
        help="serve only repos on the allow-list (default: pull-through for any repo)",
    )
    # Checked by config validation, not argparse choices: the same rule and message then cover the
    # flag, HUB_MIRROR_LOG_LEVEL and the YAML file, in any case.
    serve.add_argument("--log-level", help=f"{', '.join(LOG_LEVELS)} (default INFO)")
    add_smoke_parser(sub)
    add_admin_parsers(sub)
    add_lifecycle_parsers(sub)
    return parser


def serve(args: argparse.Namespace) -> int:
    overrides = {
        **storage_overrides(args),
        "server": {"host": args.host, "port": args.port},
        "upstream": {"url": args.upstream},
        "log": {"format": args.log_format, "level": args.log_level},
        "policy": {"enforce_allowlist": args.enforce_allowlist},
    }
    try:
        config = load_config(args.config, overrides)
    except ConfigError as exc:
        print(f"hub-mirror: configuration error: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.log.level, config.log.format, secrets=(config.admin.token, config.upstream.token))
    tune_allocator()
    if config.storage.backend == "local":
        problem = _cache_dir_problem(config.cache_dir)
        if problem is not None:
            where = config.cache_dir.resolve()
            print(f"hub-mirror: cannot use the cache directory {where}: {problem}", file=sys.stderr)
            return 1
    storage = (
        f"s3://{config.storage.s3_bucket}/{config.storage.s3_prefix} at {config.storage.s3_endpoint or 'AWS'}"
        if config.storage.backend == "s3"
        else f"local {config.cache_dir.resolve()}"
    )
    logging.getLogger(__name__).info(
        "hub-mirror %s on http://%s:%d, upstream %s, storage %s",
        __version__,
        config.server.host,
        config.server.port,
        config.upstream.url,
        storage,
    )
    try:
        # In-flight downloads get a short grace period on shutdown, well inside common orchestrator limits.
        web.run_app(
            create_app(config),
            host=config.server.host,
            port=config.server.port,
            print=None,
            # The mirror cuts what is left at the end of server.shutdown_grace itself (hub/drain.py).
            shutdown_timeout=config.server.shutdown_grace + 5,
            access_log=None,
        )
    except OSError as exc:
        # Storage starts inside run_app too (the app's cleanup context), before the sockets; its
        # errors name a file, socket errors do not.
        if exc.filename is not None:
            print(f"hub-mirror: cannot start storage ({storage}): {exc}", file=sys.stderr)
        else:
            print(f"hub-mirror: cannot listen on {config.server.host}:{config.server.port}: {exc}", file=sys.stderr)
        return 1
    return 0


def _cache_dir_problem(path: Path) -> str | None:
    """Why the local cache directory cannot be used (the OS error), or None.

    Checked before start, so the message names the directory: storage starting inside run_app
    fails with an OSError that would otherwise read like a listen error.
    """
    try:
        path.mkdir(parents=True, exist_ok=True)
        # Only writing tells: permission bits, ACLs and read-only mounts all answer differently.
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        return str(exc)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return serve(args)
    if args.command == "smoke":
        return run_smoke(args)
    if args.command in ("allow", "sync", "status"):
        return run_admin(args)
    status = run_lifecycle(args)
    return 2 if status is None else status
