"""Storage backends behind one interface (see base.py)."""

from mirror.storage.base import BlobWriter, ObjectInfo, ObjectNotFound, Storage, StorageUnavailable
from mirror.storage.local import LocalStorage

__all__ = ["BlobWriter", "LocalStorage", "ObjectInfo", "ObjectNotFound", "Storage", "StorageUnavailable"]
