"""The inference smoke worker: a tiny Qwen3-VL, published in the emulator, pulled through the mirror.

The tiny model has the real repo's architecture and file layout but random weights, so its words mean
nothing: a passing run is proven by comparison with the same model loaded from its directory
(`--reference`), and the answer check is exercised by expecting a word it cannot say. Everything
runs on the CPU in float32.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from mirror.cli import main
from mirror.smoke.options import SmokeOptions, parse_interval
from mirror.smoke.result import SmokeResult
from mirror.smoke.runner import child_env, run_every
from mirror.smoke.verify import ListedFile, compare_with_reference, missing_weights, verify_files
from mirror.smoke.worker import answer_matches
from testbed.hubemu import HubEmulator, git_blob_sha1, sha256_hex
from testbed.mirror_server import MirrorThread, free_port
from tests.support.client import run_client
from tests.support.tiny_qwen3vl import build_tiny_qwen3vl, repo_files

REPO = "Qwen/Tiny-VL"
SHARD = "model-00002-of-00004.safetensors"
REPO_ROOT = Path(__file__).resolve().parent.parent
smoke = pytest.mark.smoke


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_qwen3vl(tmp_path_factory.mktemp("tiny-qwen3vl"))


@pytest.fixture
def tiny_files(tiny_dir: Path) -> dict[str, bytes]:
    return repo_files(tiny_dir)


def run_smoke(mirror: MirrorThread, tmp_path: Path, *args: str) -> tuple[int, dict]:
    """`hub-mirror smoke` in this process (the worker is still a child process); returns (exit code, result)."""
    out = tmp_path / "result.json"
    argv = ["smoke", "--endpoint", mirror.url, "--repo", REPO, "--device", "cpu", "--dtype", "float32"]
    code = main([*argv, "--max-new-tokens", "8", "--json", str(out), *args])
    return code, json.loads(out.read_text())


def listing_of(files: dict[str, bytes], lfs: set[str]) -> list[ListedFile]:
    """A tree listing as the Hub builds it, hashed by the emulator's own functions."""
    return [
        ListedFile(path, len(data), git_blob_sha1(data), sha256_hex(data) if path in lfs else None)
        for path, data in files.items()
    ]


def flip_byte(path: Path, offset: int) -> None:
    with path.open("r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0x01]))


# --- end to end through the mirror -------------------------------------------------------------


@smoke
def test_passes_against_reference_with_identical_ids_and_logits(
    hub: HubEmulator, mirror: MirrorThread, tiny_dir: Path, tiny_files: dict[str, bytes], tmp_path: Path
) -> None:
    hub.add_repo("model", REPO, tiny_files)
    # As an operator runs it: a real process, the JSON result alone on stdout.
    cli = [sys.executable, "-m", "mirror", "smoke", "--endpoint", mirror.url, "--repo", REPO, "--device", "cpu"]
    proc = subprocess.run(
        [*cli, "--dtype", "float32", "--max-new-tokens", "8", "--reference", str(tiny_dir)],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=REPO_ROOT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["passed"] is True and result["stage"] == "done", result["reason"]
    assert result["commit"] == hub.get_repo("model", REPO).head()
    assert result["files_verified"] == len(tiny_files) == 16
    assert result["bytes"] == sum(len(data) for data in tiny_files.values())
    assert result["download_s"] > 0 and result["download_mb_per_s"] > 0 and result["load_s"] > 0
    assert result["time_to_first_token_s"] > 0 and result["tokens_per_s"] > 0
    assert result["peak_gpu_memory_bytes"] is None  # CPU
    assert result["new_tokens"] == len(result["token_ids"]) > 0
    ref = result["reference"]
    assert ref["files_equal"] and ref["token_ids_equal"] and ref["logits_equal"]
    assert ref["token_ids"] == result["token_ids"] and ref["logits_sha256"] == result["logits_sha256"]
    assert ref["logits_max_abs_diff"] == 0.0
    # Every weight byte came through the mirror, none from anywhere else.
    assert all(any(path.endswith(name) for _, path in mirror.requests) for name in tiny_files)
    assert "hub-mirror smoke: PASS" in proc.stderr


@smoke
def test_corrupt_upstream_shard_fails_the_download_and_never_loads(
    hub: HubEmulator, mirror: MirrorThread, tiny_files: dict[str, bytes], tmp_path: Path
) -> None:
    hub.add_repo("model", REPO, tiny_files)
    hub.faults.corrupt(path_contains=SHARD, offset=100_000)
    code, result = run_smoke(mirror, tmp_path)
    assert code == 1 and result["passed"] is False
    # The mirror refuses to publish bad bytes and cuts the body; the worker names the shard that never arrived.
    assert result["stage"] == "download"
    assert result["reason"].startswith("download failed:") and f"not downloaded: {SHARD}" in result["reason"]
    assert result["load_s"] is None and result["answer"] is None and result["files_verified"] == 0


@smoke
def test_corrupt_cached_shard_is_caught_by_the_hash_check_before_loading(
    hub: HubEmulator, mirror: MirrorThread, tiny_files: dict[str, bytes], tmp_path: Path
) -> None:
    hub.add_repo("model", REPO, tiny_files)
    hf_home = tmp_path / "hf-home"
    run_client(mirror.url, f'snapshot_download("{REPO}")', hf_home)
    # Bit rot in the client's cache: huggingface_hub trusts a blob it already has, the smoke check must not.
    blob = hf_home / "hub" / "models--Qwen--Tiny-VL" / "blobs" / sha256_hex(tiny_files[SHARD])
    flip_byte(blob, 1234)
    code, result = run_smoke(mirror, tmp_path, "--hf-home", str(hf_home))
    assert code == 1 and result["stage"] == "verify"
    assert f"sha256 mismatch: {SHARD} (listing {sha256_hex(tiny_files[SHARD])}" in result["reason"]
    assert "failed before loading" in result["reason"]
    assert result["load_s"] is None and result["answer"] is None


@smoke
def test_shard_missing_from_the_repo_fails_before_loading(
    hub: HubEmulator, mirror: MirrorThread, tiny_files: dict[str, bytes], tmp_path: Path
) -> None:
    # Every listed file downloads and hashes fine, but the index names a shard nobody has: a half-pushed
    # repo, or a mirror listing that lost an entry. transformers would only fail deep inside the load.
    files = {path: data for path, data in tiny_files.items() if path != SHARD}
    hub.add_repo("model", REPO, files)
    code, result = run_smoke(mirror, tmp_path)
    assert code == 1 and result["stage"] == "verify"
    assert result["reason"] == (
        f"repo incomplete: missing file: {SHARD} is named by model.safetensors.index.json "
        "but not in the mirror's listing"
    )
    assert result["files_verified"] == len(files) and result["load_s"] is None


@smoke
def test_files_that_differ_from_the_reference_fail_before_loading(
    hub: HubEmulator, mirror: MirrorThread, tiny_dir: Path, tiny_files: dict[str, bytes], tmp_path: Path
) -> None:
    hub.add_repo("model", REPO, tiny_files)
    reference = tmp_path / "reference"
    shutil.copytree(tiny_dir, reference)
    flip_byte(reference / SHARD, 5000)
    (reference / "extra.txt").write_text("not upstream")
    code, result = run_smoke(mirror, tmp_path, "--reference", str(reference))
    assert code == 1 and result["stage"] == "verify"
    assert f"differs from reference: {SHARD}" in result["reason"]
    assert "only in reference: extra.txt" in result["reason"]
    assert result["reference"]["files_equal"] is False and result["load_s"] is None


@smoke
def test_wrong_answer_fails_the_answer_check(
    hub: HubEmulator, mirror: MirrorThread, tiny_files: dict[str, bytes], tmp_path: Path
) -> None:
    hub.add_repo("model", REPO, tiny_files)
    code, result = run_smoke(mirror, tmp_path, "--expect", "zebra", "giraffe")
    assert code == 1 and result["stage"] == "generate"
    # It loaded and generated (so the failure is the answer, not the plumbing) and says what it heard.
    assert result["load_s"] > 0 and result["token_ids"] and result["answer"] is not None
    assert result["reason"] == f"answer {result['answer']!r} does not contain any of ['zebra', 'giraffe']"
    assert result["expected"] == ["zebra", "giraffe"]


@smoke
def test_every_loops_and_serves_the_last_result_as_metrics(
    hub: HubEmulator, mirror: MirrorThread, tiny_dir: Path, tiny_files: dict[str, bytes], tmp_path: Path
) -> None:
    hub.add_repo("model", REPO, tiny_files)
    port = free_port()
    outcome: dict[str, object] = {}

    def loop() -> None:
        outcome["code"], outcome["result"] = run_smoke(
            mirror,
            tmp_path,
            *("--reference", str(tiny_dir), "--every", "1s", "--max-runs", "2"),
            *("--metrics-port", str(port), "--metrics-host", "127.0.0.1"),
        )

    thread = threading.Thread(target=loop)
    thread.start()
    page = ""
    deadline = time.monotonic() + 120
    first = f'hub_mirror_smoke_runs_total{{repo="{REPO}",result="pass"}} 1.0'
    while first not in page and thread.is_alive() and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
                page = resp.read().decode()
        except OSError:
            pass
        time.sleep(0.05)
    thread.join(180)
    assert first in page, page
    commit = hub.get_repo("model", REPO).head()
    assert f'hub_mirror_smoke_passed{{repo="{REPO}"}} 1.0' in page
    assert f'hub_mirror_smoke_last_result_info{{commit="{commit}",repo="{REPO}",stage="done"}} 1.0' in page
    assert f'hub_mirror_smoke_files_verified{{repo="{REPO}"}} 16.0' in page
    assert f'hub_mirror_smoke_peak_gpu_memory_bytes{{repo="{REPO}"}} NaN' in page
    assert outcome["code"] == 0 and outcome["result"]["passed"]  # type: ignore[index]
    # Two full runs, each in a fresh HF_HOME, each asking the mirror for the revision again.
    revision_calls = [p for _, p in mirror.requests if p.startswith(f"/api/models/{REPO}/revision/main")]
    assert len(revision_calls) == 2
    with pytest.raises(OSError):  # the metrics server stops with the loop
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)


# --- units: the logic that decides pass and fail --------------------------------------------------


def test_verify_files_checks_sha256_for_lfs_and_git_sha1_for_the_rest(tmp_path: Path) -> None:
    old_config, new_config = b'{"a": 1}', b'{"a": 2}'
    files = {"config.json": old_config, "w.safetensors": os.urandom(50_000), "sub/notes.txt": b"hello"}
    listing = listing_of(files, lfs={"w.safetensors"})
    for path, data in files.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(data)
    good = verify_files(tmp_path, listing)
    assert good.ok and sorted(good.verified) == sorted(files)

    flip_byte(tmp_path / "w.safetensors", 49_999)
    (tmp_path / "config.json").write_bytes(new_config)  # same size, different content
    (tmp_path / "sub" / "notes.txt").unlink()
    (tmp_path / "stray.bin").write_bytes(b"x")
    bad = verify_files(tmp_path, listing)
    assert bad.verified == []
    assert sorted(p.split(":")[0] for p in bad.problems) == [
        "git blob sha1 mismatch",
        "missing on disk",
        "not in the mirror's listing",
        "sha256 mismatch",
    ]
    assert f"sha256 mismatch: w.safetensors (listing {sha256_hex(files['w.safetensors'])}, disk " in bad.reason()
    assert f"config.json (listing {git_blob_sha1(old_config)}, disk {git_blob_sha1(new_config)})" in bad.reason()


def test_verify_files_rejects_wrong_sizes_and_unsafe_paths(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_bytes(b"abc")
    listing = [ListedFile("a.txt", 4, git_blob_sha1(b"abcd")), ListedFile("../etc/passwd", 1, "0" * 40)]
    report = verify_files(tmp_path, listing)
    assert report.problems == [
        "size mismatch: a.txt (listing 4 bytes, disk 3)",
        "unsafe path in listing: '../etc/passwd'",
    ]


def test_verify_files_ignores_client_metadata_folders(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_bytes(b"abc")
    (tmp_path / ".cache" / "huggingface").mkdir(parents=True)
    (tmp_path / ".cache" / "huggingface" / "a.txt.metadata").write_text("x")
    assert verify_files(tmp_path, [ListedFile("a.txt", 3, git_blob_sha1(b"abc"))]).ok


def test_missing_weights_reads_the_index(tmp_path: Path) -> None:
    index = {"weight_map": {"a.w": "model-1.safetensors", "b.w": "model-2.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    names = ["config.json", "model.safetensors.index.json", "model-1.safetensors"]
    listing = [ListedFile(name, 0, "") for name in names]
    assert missing_weights(tmp_path, listing) == [
        "missing file: model-2.safetensors is named by model.safetensors.index.json but not in the mirror's listing"
    ]
    assert missing_weights(tmp_path, [*listing, ListedFile("model-2.safetensors", 0, "")]) == []
    assert missing_weights(tmp_path, [ListedFile("model.safetensors", 0, "")]) == [
        "missing file: config.json is not in the mirror's listing"
    ]


def test_compare_with_reference_is_byte_for_byte(tmp_path: Path) -> None:
    ours, ref = tmp_path / "ours", tmp_path / "ref"
    files = {"config.json": b"{}", "w.safetensors": b"weights"}
    for root in (ours, ref):
        root.mkdir()
        for path, data in files.items():
            (root / path).write_bytes(data)
    listing = listing_of(files, lfs={"w.safetensors"})
    assert compare_with_reference(ours, listing, ref).ok
    (ref / "config.json").write_bytes(b"[]")
    assert compare_with_reference(ours, listing, ref).problems == [
        f"differs from reference: config.json (sha256 {sha256_hex(b'{}')} vs {sha256_hex(b'[]')})"
    ]


def test_answer_matching_is_by_whole_word_and_case_insensitive() -> None:
    assert answer_matches("Red.", ["red"])
    assert answer_matches("It is RED", ["blue", "red"])
    assert not answer_matches("reddish", ["red"])
    assert not answer_matches("", ["red"])


def test_expected_words_default_to_red_only_without_a_reference() -> None:
    assert SmokeOptions("http://m").expected_words() == ["red"]
    assert SmokeOptions("http://m", reference="/ref").expected_words() == []
    assert SmokeOptions("http://m", reference="/ref", expect=["Red"]).expected_words() == ["Red"]


def test_parse_interval() -> None:
    assert [parse_interval(t) for t in ("6h", "30m", "90s", "1d", "2.5")] == [21600, 1800, 90, 86400, 2.5]
    for bad in ("", "6 hours", "-1h", "0s"):
        with pytest.raises(ValueError):
            parse_interval(bad)


def test_child_env_points_only_at_the_mirror(tmp_path: Path) -> None:
    base = {"HF_ENDPOINT": "https://huggingface.co", "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": "/x", "HF_TOKEN": "t"}
    env = child_env({**base, "PATH": "/bin"}, "http://mirror:8090/", tmp_path)
    assert env["HF_ENDPOINT"] == "http://mirror:8090" and env["HF_HOME"] == str(tmp_path)
    assert "HF_HUB_OFFLINE" not in env and "HF_HUB_CACHE" not in env
    assert env["HF_TOKEN"] == "t" and env["PATH"] == "/bin"  # gated repos still need the caller's token


def test_run_every_runs_start_to_start_and_stops_after_max_runs() -> None:
    seen: list[SmokeResult] = []
    sleeps: list[float] = []
    results = iter([SmokeResult("r", "main", "e", passed=True), SmokeResult("r", "main", "e", passed=False)])
    last = run_every(lambda: next(results), 3600, seen.append, max_runs=2, sleep=sleeps.append)
    assert [r.passed for r in seen] == [True, False] and last is seen[-1]
    assert len(sleeps) == 1 and 3590 < sleeps[0] <= 3600  # the run's own time is taken off the wait


def test_importing_the_mirror_does_not_import_torch() -> None:
    code = "import sys, mirror.cli; print([m for m in ('torch', 'transformers', 'PIL') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, check=True)
    assert out.stdout.strip() == "[]"
