"""Offline bundles: `hub-mirror export` from a cache the real client filled, `hub-mirror import` into a
fresh one (local and S3), and a mirror on it serving every file with its upstream unreachable.

Tampered, truncated and future bundles are rejected with the target cache left exactly as it was;
a second import changes nothing, and an import interrupted by a failing store finishes when run again.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tarfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mirror.cache import keys
from mirror.cli import main
from mirror.lifecycle import bundles
from mirror.repo import RepoRef
from mirror.storage import LocalStorage
from testbed.hubemu import HubEmulator, sha256_hex
from testbed.mirror_server import free_port
from tests.conftest import SHARED_BUCKET
from tests.support.client import run_client
from tests.support.mirrors import start_mirror
from tests.support.storage_faults import FaultyStorage
from tests.support.tools import run, tool

WEIGHTS = os.urandom(300_000)
MODEL = {
    "config.json": b'{"model_type": "tiny"}',
    "w.safetensors": WEIGHTS,
    "sub/notes.txt": b"nested file\n",
}
DATASET = {"data/train.parquet": os.urandom(120_000), "README.md": b"# d\n"}
MODEL_REPO = RepoRef("model", "org/m")


@pytest.fixture(scope="module")
def upstream() -> Iterator[HubEmulator]:
    with HubEmulator() as emu:
        emu.add_repo("model", "org/m", MODEL)
        emu.add_repo("dataset", "org/d", DATASET)
        yield emu


@pytest.fixture(scope="module")
def source(upstream: HubEmulator, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache the real huggingface_hub filled through a mirror, which is then stopped."""
    cache = tmp_path_factory.mktemp("source") / "cache"
    server = start_mirror(upstream.url, cache)
    try:
        out = run_client(
            server.url,
            'out["m"] = snapshot_download("org/m")\nout["d"] = snapshot_download("org/d", repo_type="dataset")',
            tmp_path_factory.mktemp("fill-client"),
        )
        assert (Path(out["m"]) / "w.safetensors").read_bytes() == WEIGHTS
        server.settle()
    finally:
        server.stop()
    return cache


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def bundle_paths(source: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same two repos exported once as a tar and once as a directory."""
    where = tmp_path_factory.mktemp("bundles")
    paths = {"tar": where / "b.tar", "dir": where / "b"}
    for path in paths.values():
        assert main(["export", "org/m", "datasets/org/d@main", "--to", str(path), "--cache-dir", str(source)]) == 0
    return paths


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under `root` with its bytes (None for folders): a cache before and after."""
    if not root.exists():
        return {}
    return {p.relative_to(root).as_posix(): None if p.is_dir() else p.read_bytes() for p in sorted(root.rglob("*"))}


def objects(root: Path) -> dict[str, bytes | None]:
    return {k: v for k, v in snapshot(root / "objects").items() if v is not None}


def dead_upstream() -> str:
    """An upstream URL where nothing listens: every request is refused."""
    return f"http://127.0.0.1:{free_port()}"


def curl_file(url: str, dest: Path) -> bytes:
    proc = run(tool("curl"), "-sSf", "--max-time", "60", "-o", str(dest), url)
    assert proc.returncode == 0, proc.stderr
    return dest.read_bytes()


# -- the round trip ------------------------------------------------------------------------------


def test_tar_bundle_imported_serves_every_file_with_upstream_down(
    bundle_paths: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "air-gapped"
    code, out, err = cli(capsys, "import", str(bundle_paths["tar"]), "--cache-dir", str(target))
    assert code == 0, err
    assert "imported 2 repos: 5 blobs written" in out and "0 already stored" in out

    server = start_mirror(dead_upstream(), target)
    try:
        got = run_client(
            server.url,
            """
            m = snapshot_download("org/m")
            d = snapshot_download("org/d", repo_type="dataset")
            one = hf_hub_download("org/m", "w.safetensors", cache_dir=os.path.join(os.environ["HF_HOME"], "other"))
            def files(root):
                found = {}
                for dirpath, _, names in os.walk(root):
                    for name in names:
                        path = os.path.join(dirpath, name)
                        found[os.path.relpath(path, root)] = open(path, "rb").read().hex()
                return found
            out["m"], out["d"], out["one"] = files(m), files(d), open(one, "rb").read().hex()
            """,
            tmp_path / "client",
        )
        assert {k: bytes.fromhex(v) for k, v in got["m"].items()} == MODEL
        assert {k: bytes.fromhex(v) for k, v in got["d"].items()} == DATASET
        assert bytes.fromhex(got["one"]) == WEIGHTS
        assert curl_file(f"{server.url}/org/m/resolve/main/w.safetensors", tmp_path / "w") == WEIGHTS
        parquet = curl_file(f"{server.url}/datasets/org/d/resolve/main/data/train.parquet", tmp_path / "p")
        assert parquet == DATASET["data/train.parquet"]
    finally:
        server.stop()


def test_directory_bundle_into_s3_serves_with_upstream_down(
    bundle_paths: dict[str, Path], s3_settings: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    s3_flags = [
        "--storage",
        "s3",
        "--s3-endpoint",
        str(s3_settings["s3_endpoint"]),
        "--s3-bucket",
        SHARED_BUCKET,
        "--s3-prefix",
        str(s3_settings["s3_prefix"]),
        "--cache-dir",
        str(tmp_path / "work"),
    ]
    code, out, err = cli(capsys, "import", str(bundle_paths["dir"]), *s3_flags)
    assert code == 0, err
    assert "5 blobs written" in out
    # Again: everything is there already.
    code, out, err = cli(capsys, "import", str(bundle_paths["dir"]), *s3_flags)
    assert code == 0, err
    assert "0 blobs written (0 B), 5 already stored" in out and "0 records written" in out

    server = start_mirror(dead_upstream(), tmp_path / "work", storage=s3_settings)
    try:
        assert curl_file(f"{server.url}/org/m/resolve/main/w.safetensors", tmp_path / "w") == WEIGHTS
        got = run_client(
            server.url, 'out["c"] = open(hf_hub_download("org/m", "config.json"), "rb").read().hex()', tmp_path / "c"
        )
        assert bytes.fromhex(got["c"]) == MODEL["config.json"]
    finally:
        server.stop()


def test_both_forms_give_the_same_cache_and_a_second_import_changes_nothing(
    bundle_paths: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from_tar, from_dir = tmp_path / "from-tar", tmp_path / "from-dir"
    assert cli(capsys, "import", str(bundle_paths["tar"]), "--cache-dir", str(from_tar))[0] == 0
    assert cli(capsys, "import", str(bundle_paths["dir"]), "--cache-dir", str(from_dir))[0] == 0
    first = objects(from_tar)
    assert first == objects(from_dir)
    assert keys.blob_key(sha256_hex(WEIGHTS)) in first

    code, out, _ = cli(capsys, "import", str(bundle_paths["tar"]), "--cache-dir", str(from_tar))
    assert code == 0
    assert "0 blobs written (0 B), 5 already stored; 0 records written" in out
    assert objects(from_tar) == first


def test_manifest_describes_repos_records_and_blobs(bundle_paths: dict[str, Path]) -> None:
    manifest = json.loads((bundle_paths["dir"] / "manifest.json").read_text())
    assert manifest["format"] == "hub-mirror-bundle" and manifest["format_version"] == bundles.FORMAT_VERSION
    assert manifest["mirror_version"] and manifest["created"].endswith("Z")
    repos = {(r["type"], r["id"], r["revision"]): r for r in manifest["repos"]}
    assert set(repos) == {("model", "org/m", None), ("dataset", "org/d", "main")}
    assert repos[("model", "org/m", None)]["files"] == 3
    blob = {b["key"]: b for b in manifest["blobs"]}[keys.blob_key(sha256_hex(WEIGHTS))]
    assert blob == {"key": blob["key"], "size": len(WEIGHTS), "hash": f"sha256:{sha256_hex(WEIGHTS)}"}
    record_keys = {r["key"] for r in manifest["records"]}
    assert keys.ref_key(MODEL_REPO, "main") in record_keys
    assert keys.visibility_key(MODEL_REPO) in record_keys
    assert all(r["hash"].startswith("sha256:") and r["size"] > 0 for r in manifest["records"])
    with tarfile.open(bundle_paths["tar"]) as tar:
        names = tar.getnames()
    assert names[-2:] == ["manifest.json", "manifest.sha256"]  # last, so a truncated tar has none
    assert sorted(names) == sorted(
        p.relative_to(bundle_paths["dir"]).as_posix() for p in bundle_paths["dir"].rglob("*") if p.is_file()
    )


# -- rejections ----------------------------------------------------------------------------------


def _edit_manifest(root: Path, change: Callable[[dict[str, Any]], None], resum: bool = True) -> None:
    path = root / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    raw = json.dumps(manifest).encode()
    path.write_bytes(raw)
    if resum:
        (root / "manifest.sha256").write_text(f"{sha256_hex(raw)}  manifest.json\n")


def _flip_blob_byte(root: Path) -> None:
    path = root / "objects" / keys.blob_key(sha256_hex(WEIGHTS))
    data = bytearray(path.read_bytes())
    data[1000] ^= 0x01
    path.write_bytes(bytes(data))


def _change_record_hash(manifest: dict[str, Any]) -> None:
    manifest["records"][0]["hash"] = "sha256:" + "0" * 64


def _add_record(root: Path) -> None:
    # A record outside the exported repos (here: the allow-list) must never reach a cache.
    data = b'{"entries": []}'
    (root / "objects" / "admin").mkdir()
    (root / "objects" / "admin" / "allowlist.json").write_bytes(data)
    _edit_manifest(
        root,
        lambda m: m["records"].append(
            {"key": "admin/allowlist.json", "size": len(data), "hash": "sha256:" + sha256_hex(data)}
        ),
    )


def _future(manifest: dict[str, Any]) -> None:
    manifest["format_version"] = bundles.FORMAT_VERSION + 1


DIR_TAMPERING: dict[str, tuple[Callable[[Path], None], str]] = {
    "blob byte flipped": (_flip_blob_byte, "does not match its content hash"),
    "manifest edited": (
        lambda root: _edit_manifest(root, _change_record_hash, resum=False),
        "manifest.json does not match manifest.sha256",
    ),
    "record hash changed in manifest": (
        lambda root: _edit_manifest(root, _change_record_hash),
        "does not match its sha256 in the manifest",
    ),
    "record added": (_add_record, "admin/allowlist.json is not a record of the bundle's repos"),
    "blob file missing": (
        lambda root: (root / "objects" / keys.blob_key(sha256_hex(WEIGHTS))).unlink(),
        "is missing (the manifest lists it)",
    ),
    "future format version": (lambda root: _edit_manifest(root, _future), "is format version 2"),
}


@pytest.fixture
def target(tmp_path: Path) -> Path:
    """A cache that already holds something of its own."""
    cache = tmp_path / "target"

    async def fill() -> None:
        storage = LocalStorage(cache)
        await storage.start()
        await storage.put_bytes(keys.visibility_key(RepoRef("model", "other/x")), b'{"visibility":"public","at":1}')
        await storage.close()

    asyncio.run(fill())
    return cache


def assert_rejected(
    capsys: pytest.CaptureFixture[str], bundle: Path, target: Path, message: str, *, extra: tuple[str, ...] = ()
) -> None:
    before = snapshot(target)
    code, out, err = cli(capsys, "import", str(bundle), "--cache-dir", str(target), *extra)
    assert code == 1, (out, err)
    assert "rejected and nothing was imported" in err and message in err, err
    assert out == ""
    assert snapshot(target) == before


@pytest.mark.parametrize("case", sorted(DIR_TAMPERING))
def test_tampered_directory_bundle_is_rejected_and_changes_nothing(
    case: str, bundle_paths: dict[str, Path], target: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tamper, message = DIR_TAMPERING[case]
    bundle = tmp_path / "bundle"
    shutil.copytree(bundle_paths["dir"], bundle)
    tamper(bundle)
    assert_rejected(capsys, bundle, target, message)


def test_tar_with_a_flipped_blob_byte_is_rejected(
    bundle_paths: dict[str, Path], target: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = tmp_path / "b.tar"
    shutil.copyfile(bundle_paths["tar"], bundle)
    with tarfile.open(bundle) as tar:
        offset = tar.getmember("objects/" + keys.blob_key(sha256_hex(WEIGHTS))).offset_data
    with bundle.open("r+b") as handle:
        handle.seek(offset + 12345)
        byte = handle.read(1)
        handle.seek(offset + 12345)
        handle.write(bytes([byte[0] ^ 0xFF]))
    assert_rejected(capsys, bundle, target, f"blob {keys.blob_key(sha256_hex(WEIGHTS))} does not match")


@pytest.mark.parametrize("cut_in", ["w.safetensors", "manifest.json", "manifest.sha256"])
def test_truncated_tar_is_rejected(
    cut_in: str, bundle_paths: dict[str, Path], target: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    member = "objects/" + keys.blob_key(sha256_hex(WEIGHTS)) if cut_in == "w.safetensors" else cut_in
    with tarfile.open(bundle_paths["tar"]) as tar:
        info = tar.getmember(member)
    data = bundle_paths["tar"].read_bytes()
    bundle = tmp_path / "b.tar"
    bundle.write_bytes(data[: info.offset_data + info.size // 2])  # a copy that stopped halfway through it
    assert_rejected(capsys, bundle, target, "truncated")


def test_a_fresh_target_is_not_created_by_a_rejected_import(
    bundle_paths: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(bundle_paths["dir"], bundle)
    _flip_blob_byte(bundle)
    assert_rejected(capsys, bundle, tmp_path / "never", "does not match its content hash")
    assert not (tmp_path / "never").exists()


# -- resuming, and records newer in the target ---------------------------------------------------


def test_interrupted_import_finishes_when_run_again(
    bundle_paths: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clean = tmp_path / "clean"
    assert cli(capsys, "import", str(bundle_paths["tar"]), "--cache-dir", str(clean))[0] == 0
    bundle = bundles.verify_bundle(bundle_paths["tar"])
    total = sum(blob.size for blob in bundle.blobs)
    target = tmp_path / "target"
    storage = FaultyStorage(LocalStorage(target, owner=False))
    storage.faults.fail_after(total - 1)  # the store fills up during the last blob
    summary = bundles.ImportSummary()

    async def interrupted() -> None:
        await storage.start()
        try:
            await bundles.load_bundle(bundle, storage, summary=summary)
        finally:
            await storage.close()

    with pytest.raises(Exception, match="injected fault"):
        asyncio.run(interrupted())
    assert summary.blobs_written == len(bundle.blobs) - 1
    partial = objects(target)
    assert partial and not any(key.startswith("repos/") for key in partial)  # records only after every blob
    assert not any((target / "staging").iterdir())  # the failed blob's staging file is gone

    code, out, err = cli(capsys, "import", str(bundle_paths["tar"]), "--cache-dir", str(target))
    assert code == 0, err
    assert f"1 blobs written ({bundles.human_size(total - sum(len(v or b'') for k, v in partial.items()))})" in out
    assert f"{len(bundle.blobs) - 1} already stored" in out
    assert objects(target) == objects(clean)


def test_newer_refs_in_the_target_are_kept_older_ones_replaced(
    bundle_paths: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "target"
    assert cli(capsys, "import", str(bundle_paths["dir"]), "--cache-dir", str(target))[0] == 0
    ref = target / "objects" / keys.ref_key(MODEL_REPO, "main")
    exported = ref.read_bytes()
    newer = json.dumps({"revision": "main", "commit": "f" * 40, "at": time.time() + 3600}).encode()
    ref.write_bytes(newer)
    code, out, _ = cli(capsys, "import", str(bundle_paths["dir"]), "--cache-dir", str(target))
    assert code == 0 and "1 kept (newer in this cache)" in out
    assert ref.read_bytes() == newer

    ref.write_bytes(json.dumps({"revision": "main", "commit": "f" * 40, "at": 1.0}).encode())
    code, out, _ = cli(capsys, "import", str(bundle_paths["dir"]), "--cache-dir", str(target))
    assert code == 0 and "1 records written" in out
    assert ref.read_bytes() == exported


# -- export failures and arguments ---------------------------------------------------------------


def _no_bundle_left(path: Path) -> None:
    assert not path.exists()
    assert not [p for p in path.parent.iterdir() if p.name.startswith(f".{path.name}.partial")]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("org/nothing", "knows no commit for its default branch"),
        ("org/m@v9", "knows no commit for the revision 'v9'"),
        ("org/m@" + "a" * 40, "no file of this revision is in the cache"),
    ],
)
@pytest.mark.parametrize("form", ["b.tar", "b"])
def test_export_of_what_is_not_cached_fails_and_writes_nothing(
    spec: str, message: str, form: str, source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / form
    code, out, err = cli(capsys, "export", "org/m", spec, "--to", str(path), "--cache-dir", str(source))
    assert code == 1 and message in err and out == ""
    _no_bundle_left(path)


@pytest.mark.parametrize("form", ["b.tar", "b"])
def test_export_with_a_blob_missing_names_it_and_writes_nothing(
    form: str, source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(source, cache)
    (cache / "objects" / keys.blob_key(sha256_hex(WEIGHTS))).unlink()
    path = tmp_path / form
    code, _, err = cli(capsys, "export", "org/m", "--to", str(path), "--cache-dir", str(cache))
    assert code == 1
    assert "not completely cached" in err and "w.safetensors" in err and "hub-mirror sync" in err
    _no_bundle_left(path)


def test_export_of_a_commit_and_a_damaged_blob(
    source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ref = json.loads((source / "objects" / keys.ref_key(MODEL_REPO, "main")).read_bytes())
    path = tmp_path / "at-commit"
    code, _, err = cli(capsys, "export", f"org/m@{ref['commit']}", "--to", str(path), "--cache-dir", str(source))
    assert code == 0, err
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["repos"][0]["commit"] == manifest["repos"][0]["revision"] == ref["commit"]
    assert not any("/refs/" in r["key"] for r in manifest["records"])

    cache = tmp_path / "cache"
    shutil.copytree(source, cache)
    blob = cache / "objects" / keys.blob_key(sha256_hex(WEIGHTS))
    blob.write_bytes(b"x" + blob.read_bytes()[1:])
    code, _, err = cli(capsys, "export", "org/m", "--to", str(tmp_path / "b.tar"), "--cache-dir", str(cache))
    assert code == 1 and "is damaged" in err
    _no_bundle_left(tmp_path / "b.tar")


@pytest.mark.parametrize("spec", ["org/m@", "bad repo", "org/a/b/c", "org/m@../x", "datasets/"])
def test_export_bad_repo_syntax_exits_2(spec: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "export", spec, "--to", str(tmp_path / "b"), "--cache-dir", str(tmp_path / "c"))
    assert code == 2 and err.startswith("hub-mirror export: ") and repr(spec) in err
    assert not (tmp_path / "c").exists()


def test_export_refuses_an_existing_path(source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    existing = tmp_path / "b.tar"
    existing.write_bytes(b"keep me")
    code, _, err = cli(capsys, "export", "org/m", "--to", str(existing), "--cache-dir", str(source))
    assert code == 2 and "already exists" in err and existing.read_bytes() == b"keep me"


@pytest.mark.parametrize(
    ("text", "repo", "revision"),
    [
        ("org/m", RepoRef("model", "org/m"), None),
        ("gpt2", RepoRef("model", "gpt2"), None),
        ("models/org/m@v1.0", RepoRef("model", "org/m"), "v1.0"),
        ("datasets/org/d@refs/pr/1", RepoRef("dataset", "org/d"), "refs/pr/1"),
        ("spaces/org/s", RepoRef("space", "org/s"), None),
        ("datasets/squad", RepoRef("dataset", "squad"), None),
    ],
)
def test_repo_syntax(text: str, repo: RepoRef, revision: str | None) -> None:
    assert bundles.parse_target(text) == bundles.Target(repo, revision)


def test_pinned_branch_is_exported_at_its_pin(source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A completed sync's pin wins over a newer ref, and the bundle carries a ref made from it."""
    cache = tmp_path / "cache"
    shutil.copytree(source, cache)
    ref_path = cache / "objects" / keys.ref_key(MODEL_REPO, "main")
    commit = json.loads(ref_path.read_bytes())["commit"]
    ref_path.write_bytes(json.dumps({"revision": "main", "commit": "e" * 40, "at": time.time()}).encode())
    pin_path = cache / "objects" / keys.pin_key(MODEL_REPO, "main")
    pin_path.parent.mkdir()
    pin_path.write_bytes(json.dumps({"revision": "main", "commit": commit, "at": 5.0}).encode())
    path = tmp_path / "b"
    code, _, err = cli(capsys, "export", "org/m@main", "--to", str(path), "--cache-dir", str(cache))
    assert code == 0, err
    assert json.loads((path / "manifest.json").read_text())["repos"][0]["commit"] == commit
    made = json.loads((path / "objects" / keys.ref_key(MODEL_REPO, "main")).read_bytes())
    assert made == {"revision": "main", "commit": commit, "at": 5.0}
    assert (path / "objects" / keys.pin_key(MODEL_REPO, "main")).exists()


def test_export_and_import_stream_large_blobs_in_bounded_memory(tmp_path: Path) -> None:
    """A blob far larger than a chunk is never held whole: export, verify and import each hash and
    copy it a chunk at a time (24 MiB through, well under 8 MiB of peak allocations)."""
    big = os.urandom(24 * 1024 * 1024)
    etag, commit = sha256_hex(big), "c" * 40
    repo = RepoRef("model", "org/big")
    source, target = LocalStorage(tmp_path / "source"), LocalStorage(tmp_path / "target")

    async def fill() -> None:
        await source.start()
        writer = await source.open_writer(keys.blob_key(etag))
        for start in range(0, len(big), 1024 * 1024):
            await writer.write(big[start : start + 1024 * 1024])
        await writer.commit()
        entry = {"path": "big.bin", "etag": etag, "size": len(big)}
        await source.put_bytes(keys.entry_key(repo, commit, "big.bin"), json.dumps(entry).encode())
        ref = {"revision": "main", "commit": commit, "at": time.time()}
        await source.put_bytes(keys.ref_key(repo, "main"), json.dumps(ref).encode())

    asyncio.run(fill())
    path = tmp_path / "big.tar"
    tracemalloc.start()
    try:
        summary = asyncio.run(bundles.export_bundle(source, [bundles.parse_target("org/big")], path))
        exported_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        bundle = bundles.verify_bundle(path)

        async def load() -> bundles.ImportSummary:
            await target.start()
            return await bundles.load_bundle(bundle, target)

        imported = asyncio.run(load())
        imported_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert summary.bytes == len(big) and imported.bytes_written == len(big)
    assert any("no repo info" in note for note in summary.revisions[0].notes)
    assert exported_peak < 8 * 1024 * 1024 and imported_peak < 8 * 1024 * 1024, (exported_peak, imported_peak)
    assert (tmp_path / "target" / "objects" / keys.blob_key(etag)).read_bytes() == big
