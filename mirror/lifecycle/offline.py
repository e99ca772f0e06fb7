"""What the offline commands (gc, verify, export, import) share: finding the cache they work on.

They open the configured storage directly, not through a running mirror, so they work on a cache
whose mirror is stopped and on an air-gapped cluster's empty one. They take the same config file,
environment variables and storage flags as `hub-mirror serve`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from mirror.config import Config, ConfigError, load_config
from mirror.storage import Storage
from mirror.storage.configured import build_storage


def add_storage_args(parser: argparse.ArgumentParser) -> None:
    """The flags that say which cache a command works on (as for `hub-mirror serve`)."""
    parser.add_argument("--config", help="YAML config file (see config/mirror.example.yaml)")
    parser.add_argument("--cache-dir", help="cache directory (default ./hub-mirror-cache)")
    parser.add_argument("--storage", choices=("local", "s3"), help="storage backend (default local)")
    parser.add_argument("--s3-endpoint", help="S3 endpoint URL (MinIO, Ceph RGW, ...; omit for AWS S3)")
    parser.add_argument("--s3-bucket", help="S3 bucket holding the cache")
    parser.add_argument("--s3-prefix", help="key prefix inside the bucket (default none)")
    parser.add_argument("--s3-region", help="S3 region (default us-east-1)")


def storage_overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The config sections the storage flags set (None where a flag was not given)."""
    return {
        "cache": {"dir": args.cache_dir},
        "storage": {
            "backend": args.storage,
            "s3_endpoint": args.s3_endpoint,
            "s3_bucket": args.s3_bucket,
            "s3_prefix": args.s3_prefix,
            "s3_region": args.s3_region,
        },
    }


def config_from_args(args: argparse.Namespace) -> Config:
    """The config the flags, environment and file give; raises ConfigError."""
    return load_config(args.config, storage_overrides(args))


def load_or_exit(args: argparse.Namespace, command: str) -> Config | None:
    """The config, or None after printing why it cannot be loaded (the caller exits 2)."""
    try:
        return config_from_args(args)
    except ConfigError as exc:
        print(f"hub-mirror {command}: configuration error: {exc}", file=sys.stderr)
        return None


@asynccontextmanager
async def opened_storage(config: Config) -> AsyncIterator[Storage]:
    """The configured storage, started, and closed on the way out.

    Never as its owner: a mirror may be running on the same cache (its fills stay untouched).
    """
    storage = build_storage(config, owner=False)
    await storage.start()
    try:
        yield storage
    finally:
        await storage.close()
