"""The storage backend a config names: one factory for the server and the offline commands."""

from __future__ import annotations

from mirror.config import Config
from mirror.storage.base import Storage
from mirror.storage.local import LocalStorage


def build_storage(config: Config, *, owner: bool = True) -> Storage:
    """`owner`: for the mirror itself; offline commands pass False (see LocalStorage)."""
    storage = config.storage
    if storage.backend == "s3":
        # Imported here: boto3 costs a noticeable share of start-up, and local mirrors never need it.
        from mirror.storage.s3 import S3Storage

        return S3Storage(
            storage.s3_bucket,
            endpoint=storage.s3_endpoint or None,
            prefix=storage.s3_prefix,
            region=storage.s3_region,
            part_size=storage.s3_part_size,
            stale_upload_age=storage.s3_stale_upload_age,
            max_concurrency=storage.s3_max_concurrency,
            parts_in_flight=storage.s3_parts_in_flight,
            presigned_redirects=storage.s3_presigned_redirects,
            presigned_expiry=storage.s3_presigned_expiry,
            public_endpoint=storage.s3_public_endpoint or None,
        )
    return LocalStorage(config.cache_dir, owner=owner)
