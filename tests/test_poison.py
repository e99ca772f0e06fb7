"""Corrupt upstream bytes can never be completed by a resume, at any later time, on any replica.

A fill streams bytes before the hash is known, so when upstream sends a corrupt copy, clients are
left with a partial file holding bad bytes (the connection is cut: the last byte of every response
waits for the hash). The mirror records the blob as poisoned, in storage, and answers every later
Range request for it with the whole file (200): each client then starts over or refuses to
resume, and none appends good bytes to bad ones. Checked with the real curl, wget, aria2c and both
huggingface_hub majors, after a restart, and through a second replica sharing S3.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from mirror.cache import keys
from testbed.hubemu import HubEmulator, sha256_hex
from testbed.mirror_server import MirrorThread
from tests.support.client import run_client
from tests.support.mirrors import start_mirror

BIG = os.urandom(3 * 1024 * 1024 + 4321)
BAD_AT = 1_500_000  # the corrupt byte: well inside the part clients receive before the hash fails
GOOD = sha256_hex(BIG)
PATH = "/org/big/resolve/main/w.safetensors"


def tool_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


def run(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which(args[0]) is None:
        pytest.fail(f"{args[0]} is not on PATH (scripts/test.sh installs it)")
    return subprocess.run(list(args), env=tool_env(), capture_output=True, text=True, timeout=90, check=False)


def poisoned_partial(hub: HubEmulator, mirror: MirrorThread, target: Path) -> bytes:
    """A partial download holding the corrupt byte, as a client is left with it."""
    hub.faults.corrupt(path_contains="w.safetensors", offset=BAD_AT, times=1)
    proc = run("curl", "-sS", "--max-time", "60", "-o", str(target), mirror.url + PATH)
    assert proc.returncode != 0, "curl completed a download whose hash failed"
    mirror.settle()
    partial = target.read_bytes()
    assert BAD_AT < len(partial) < len(BIG), len(partial)
    assert partial[BAD_AT] != BIG[BAD_AT] and partial[:BAD_AT] == BIG[:BAD_AT]
    return partial


def never_completed_wrong(path: Path) -> None:
    """The file is either the right one, or not the right size (an incomplete, honest leftover)."""
    if path.exists():
        data = path.read_bytes()
        if len(data) == len(BIG):
            assert hashlib.sha256(data).hexdigest() == GOOD, "a resume completed a file with the wrong hash"


@pytest.fixture
def poisoned(hub: HubEmulator, tmp_path: Path) -> tuple[MirrorThread, Path]:
    """A mirror restarted after a corrupt fill (on the same cache), and the partial file."""
    hub.add_repo("model", "org/big", {"w.safetensors": BIG})
    first = start_mirror(hub.url, tmp_path / "cache")
    try:
        poisoned_partial(hub, first, tmp_path / "partial")
    finally:
        first.stop()
    return start_mirror(hub.url, tmp_path / "cache"), tmp_path / "partial"


def test_the_record_outlives_a_restart(poisoned: tuple[MirrorThread, Path]) -> None:
    mirror, _ = poisoned
    try:
        record = mirror.call(mirror.storage.get_bytes(keys.poison_key(GOOD)))
        assert record is not None and b"served_bytes" in record
    finally:
        mirror.stop()


def test_curl_continue_cannot_complete_a_corrupt_file(poisoned: tuple[MirrorThread, Path]) -> None:
    mirror, partial = poisoned
    try:
        proc = run("curl", "-sS", "--max-time", "60", "-C", "-", "-o", str(partial), mirror.url + PATH)
        never_completed_wrong(partial)
        # curl refuses to resume when the server sends the whole file (exit 33) and keeps the part.
        assert proc.returncode == 33, proc.stderr
        proc = run("curl", "-sS", "--max-time", "60", "-o", str(partial), mirror.url + PATH)
        assert proc.returncode == 0 and partial.read_bytes() == BIG
    finally:
        mirror.stop()


def test_wget_continue_cannot_complete_a_corrupt_file(poisoned: tuple[MirrorThread, Path]) -> None:
    mirror, partial = poisoned
    try:
        before = partial.read_bytes()
        proc = run("wget", "-q", "-c", "--tries=1", "--timeout=30", "-O", str(partial), mirror.url + PATH)
        never_completed_wrong(partial)
        # wget would skip its partial file's length of a 200 body and append the rest: refused.
        assert proc.returncode == 8 and partial.read_bytes() == before
    finally:
        mirror.stop()


def test_aria2c_continue_cannot_complete_a_corrupt_file(poisoned: tuple[MirrorThread, Path]) -> None:
    mirror, partial = poisoned
    try:
        run(
            "aria2c", "--no-conf=true", "-c", "--max-tries=2", "--file-allocation=none", "--timeout=30",
            "-d", str(partial.parent), "-o", partial.name, mirror.url + PATH,
        )  # fmt: skip
        never_completed_wrong(partial)
    finally:
        mirror.stop()


def test_old_huggingface_hub_resume_starts_over(poisoned: tuple[MirrorThread, Path], old_python: str) -> None:
    """huggingface_hub 0.36 resumes blobs/<etag>.incomplete across runs: it must end with good bytes."""
    mirror, partial = poisoned
    home = partial.parent / "hf-old"
    blobs = home / "hub" / "models--org--big" / "blobs"
    blobs.mkdir(parents=True)
    (blobs / f"{GOOD}.incomplete").write_bytes(partial.read_bytes())
    try:
        out = run_client(mirror.url, 'out["p"] = hf_hub_download("org/big", "w.safetensors")', home, python=old_python)
        assert Path(out["p"]).read_bytes() == BIG
        assert ("GET", PATH) in [(m, p) for m, p in mirror.requests]
    finally:
        mirror.stop()


def test_huggingface_hub_retry_after_a_cut_is_answered_in_full(
    hub: HubEmulator, mirror: MirrorThread, tmp_path: Path
) -> None:
    """huggingface_hub 2.4 resumes within one call after a cut: the resume right after a failed fill."""
    hub.add_repo("model", "org/big", {"w.safetensors": BIG})
    hub.faults.corrupt(path_contains="w.safetensors", offset=BAD_AT, times=1)
    out = run_client(mirror.url, 'out["p"] = hf_hub_download("org/big", "w.safetensors")', tmp_path)
    assert Path(out["p"]).read_bytes() == BIG


def test_segmented_download_completes_no_segment_with_unverified_bytes(
    hub: HubEmulator, mirror: MirrorThread, tmp_path: Path
) -> None:
    """aria2c -x4: every Range response holds back its last byte until the blob is verified."""
    hub.add_repo("model", "org/big", {"w.safetensors": BIG})
    hub.faults.corrupt(path_contains="w.safetensors", offset=BAD_AT, times=1)
    hub.faults.throttle(2 * 1024 * 1024)  # aria2c's extra connections join the fill
    args = ["aria2c", "--no-conf=true", "-x4", "-s4", "-k1M", "--max-tries=1", "--file-allocation=none",
            "--timeout=30", "-d", str(tmp_path), "-o", "w.safetensors", mirror.url + PATH]  # fmt: skip
    run(*args)
    mirror.settle()
    never_completed_wrong(tmp_path / "w.safetensors")
    hub.faults.clear()
    run(*args[:1], "-c", *args[1:])  # continue it, segments and all, against a good upstream
    never_completed_wrong(tmp_path / "w.safetensors")


def test_a_replica_sharing_storage_knows_the_blob_is_poisoned(
    hub: HubEmulator, tmp_path: Path, s3_settings: dict[str, Any]
) -> None:
    hub.add_repo("model", "org/big", {"w.safetensors": BIG})
    first = start_mirror(hub.url, tmp_path / "a", storage=s3_settings)
    second = start_mirror(hub.url, tmp_path / "b", storage=s3_settings)
    try:
        partial = tmp_path / "partial"
        poisoned_partial(hub, first, partial)
        proc = run("curl", "-sS", "--max-time", "60", "-C", "-", "-o", str(partial), second.url + PATH)
        never_completed_wrong(partial)
        assert proc.returncode == 33, proc.stderr
    finally:
        first.stop()
        second.stop()
