"""An in-process emulator of the Hugging Face Hub (and its signed CDN), for tests and benchmarks."""

from .emulator import HubEmulator, RequestRecord
from .faults import Faults
from .repos import Repo, git_blob_sha1, sha256_hex
from .synthetic import Synthetic

__all__ = ["Faults", "HubEmulator", "Repo", "RequestRecord", "Synthetic", "git_blob_sha1", "sha256_hex"]
