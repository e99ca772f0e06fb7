"""An in-process emulator of the Hugging Face Hub (and its signed CDN), for tests and benchmarks."""

from .emulator import HubEmulator, RequestRecord
from .faults import Faults
from .repos import Repo, git_blob_sha1, sha256_hex

__all__ = ["Faults", "HubEmulator", "Repo", "RequestRecord", "git_blob_sha1", "sha256_hex"]
