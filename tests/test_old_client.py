"""The download path with the last 0.x huggingface_hub (0.36, on `requests`, no hf_xet): fleets upgrade slowly.

The client lives in its own virtualenv (tests/support/old_client.py, fixture `old_python`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testbed.hubemu import HubEmulator, Repo, git_blob_sha1, sha256_hex
from testbed.mirror_server import MirrorThread
from tests.support.client import run_client
from tests.support.mirrors import start_mirror

CONFIG = b'{"model_type": "tiny", "hidden_size": 8}'
WEIGHTS = os.urandom(300_000)
TOKENIZER = b'{"version": "1.0", "model": {}}' * 400  # LFS by name, like the real repos
SMALL = {"config.json": b"{}", "README.md": b"# small", "sub/w.bin": os.urandom(20_000)}


class World:
    def __init__(self, hub: HubEmulator, mirror: MirrorThread, python: str) -> None:
        self.hub = hub
        self.mirror = mirror
        self.python = python
        self.model: Repo = hub.add_repo(
            "model",
            "org/tiny",
            {"config.json": CONFIG, "model.safetensors": WEIGHTS, "tokenizer.json": TOKENIZER},
        )
        self.small: Repo = hub.add_repo("model", "org/small", SMALL)
        self.small.tag("v1", self.small.head())

    def client(self, script: str, home: Path) -> dict[str, Any]:
        return run_client(self.mirror.url, script, home, python=self.python, timeout=120)


@pytest.fixture(scope="module")
def world(old_python: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with HubEmulator() as hub:
        mirror = start_mirror(hub.url, tmp_path_factory.mktemp("mirror-cache"))
        try:
            yield World(hub, mirror, old_python)
        finally:
            mirror.stop()


def test_client_is_0_36_on_requests_without_hf_xet(world: World, tmp_path: Path) -> None:
    out = world.client(
        """
        import importlib.util
        from huggingface_hub.utils._runtime import is_xet_available
        hf_hub_download("org/tiny", "config.json")
        out["version"] = huggingface_hub.__version__
        out["hf_xet"] = importlib.util.find_spec("hf_xet") is not None
        out["xet_available"] = is_xet_available()
        out["requests"] = "requests" in sys.modules
        out["httpx"] = "httpx" in sys.modules
        """,
        tmp_path,
    )
    assert out["version"].startswith("0.36.")
    assert out["requests"] is True and out["httpx"] is False, "0.x downloads over requests"
    # A CI venv made with a bare `pip install huggingface_hub==0.36.x` has hf-xet (a dependency on x86_64).
    venv = Path(world.python).parent.parent
    assert out["hf_xet"] is False, f"hf_xet is installed in {venv}: run `{venv}/bin/pip uninstall -y hf-xet`"
    assert out["xet_available"] is False


def test_plain_and_lfs_files_cache_like_the_hub(world: World, tmp_path: Path) -> None:
    out = world.client(
        """
        for name in ("config.json", "model.safetensors", "tokenizer.json"):
            out[name] = os.path.realpath(hf_hub_download("org/tiny", name))
        cache = os.path.join(os.environ["HF_HOME"], "hub", "models--org--tiny")
        out["ref"] = open(os.path.join(cache, "refs", "main")).read()
        out["snapshot"] = sorted(os.listdir(os.path.join(cache, "snapshots", out["ref"])))
        out["incomplete"] = [f for f in os.listdir(os.path.join(cache, "blobs")) if f.endswith(".incomplete")]
        """,
        tmp_path,
    )
    assert Path(out["config.json"]).name == git_blob_sha1(CONFIG)
    assert Path(out["config.json"]).read_bytes() == CONFIG
    assert Path(out["model.safetensors"]).name == sha256_hex(WEIGHTS)
    assert Path(out["model.safetensors"]).read_bytes() == WEIGHTS
    assert Path(out["tokenizer.json"]).name == sha256_hex(TOKENIZER)
    assert Path(out["tokenizer.json"]).read_bytes() == TOKENIZER
    assert out["ref"] == world.model.head()
    assert out["snapshot"] == ["config.json", "model.safetensors", "tokenizer.json"]
    assert out["incomplete"] == []
    assert world.hub.count(path_contains="xet-read-token") == 0


def test_second_download_is_a_head_only(world: World, tmp_path: Path) -> None:
    script = 'out["p"] = hf_hub_download("org/tiny", "model.safetensors")'
    first = world.client(script, tmp_path)
    world.mirror.requests.clear()
    second = world.client(script, tmp_path)
    assert second["p"] == first["p"]
    resolve = [(m, p) for m, p in world.mirror.requests if "/resolve/" in p]
    assert resolve == [("HEAD", "/org/tiny/resolve/main/model.safetensors")]


def test_snapshot_download_of_a_small_repo(world: World, tmp_path: Path) -> None:
    out = world.client(
        """
        for rev in ("main", "v1"):
            path = snapshot_download("org/small", revision=rev)
            out[rev] = {os.path.relpath(os.path.join(r, f), path): open(os.path.join(r, f), "rb").read().hex()
                        for r, _, fs in os.walk(path) for f in fs}
            out[rev + "_dir"] = os.path.basename(path)
        """,
        tmp_path,
    )
    expected = {name: data.hex() for name, data in SMALL.items()}
    assert out["main"] == expected
    assert out["v1"] == expected
    assert out["main_dir"] == out["v1_dir"] == world.small.head()


def test_errors_map_to_the_0_36_exceptions(world: World, tmp_path: Path) -> None:
    out = world.client(
        """
        out["missing_repo"] = err(hf_hub_download, "org/nope", "config.json")
        out["missing_file"] = err(hf_hub_download, "org/tiny", "nope.json")
        out["bad_rev"] = err(hf_hub_download, "org/tiny", "config.json", revision="nope")
        out["bad_rev_snapshot"] = err(snapshot_download, "org/small", revision="nope")
        out["missing_repo_snapshot"] = err(snapshot_download, "org/nope")
        cache = os.path.join(os.environ["HF_HOME"], "hub", "models--org--tiny", ".no_exist")
        out["no_exist"] = [f for _, _, fs in os.walk(cache) for f in fs]
        """,
        tmp_path,
    )
    assert out["missing_repo"] == "RepositoryNotFoundError"
    assert out["missing_file"] == "EntryNotFoundError"  # 1.x renamed it RemoteEntryNotFoundError
    assert out["bad_rev"] == "RevisionNotFoundError"
    assert out["bad_rev_snapshot"] == "RevisionNotFoundError"
    assert out["missing_repo_snapshot"] == "RepositoryNotFoundError"
    assert out["no_exist"] == ["nope.json"], "EntryNotFound carried X-Repo-Commit"
