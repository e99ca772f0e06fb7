"""The mirror as its clients' Xet CAS (`hub.xet: serve`), with the real hf_xet client.

hf_xet (through huggingface_hub 2.x) runs in a subprocess pointed at the mirror; the emulator is
the upstream with its own Xet CAS. What is checked: the client takes the Xet path through the
mirror (its CAS requests reach the mirror, never the upstream's CAS), the bytes are right, a
second client is served from the cache alone, a gated repo keeps its per-token isolation, and
plain HTTP clients read the same cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mirror.cache import keys
from mirror.xet import tokens
from testbed.hubemu import HubEmulator
from testbed.mirror_server import MirrorThread
from tests.support.client import run_client
from tests.support.http import send
from tests.support.mirrors import start_mirror
from tests.support.tools import run, tool

TOKEN = "hf_good"
WEIGHTS = os.urandom(3 * 1024 * 1024)
SMALL = os.urandom(300_000)
FILES = {"config.json": b'{"a": 1}', "model.safetensors": WEIGHTS, "extra.bin": SMALL}

DOWNLOAD = """
import hashlib
from pathlib import Path
p = hf_hub_download(REPO, "model.safetensors", token=TOKEN)
out["weights"] = hashlib.sha256(Path(p).read_bytes()).hexdigest()
snap = Path(snapshot_download(REPO, token=TOKEN))
out["snapshot"] = {str(f.relative_to(snap)): hashlib.sha256(f.read_bytes()).hexdigest()
                   for f in snap.rglob("*") if f.is_file()}
"""


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def script(repo: str, token: str | None) -> str:
    return f"REPO = {repo!r}\nTOKEN = {token!r}\n" + DOWNLOAD


@pytest.fixture
def serving(hub: HubEmulator, tmp_path: Path) -> Iterator[MirrorThread]:
    hub.add_repo("model", "org/m", FILES, lfs=["model.safetensors", "extra.bin"])
    hub.add_repo("model", "org/gated", FILES, lfs=["model.safetensors", "extra.bin"], gated="auto", tokens=(TOKEN,))
    server = start_mirror(hub.url, tmp_path / "cache", upstream={"xet": True}, hub={"xet": "serve"})
    yield server
    server.stop()


def mirror_cas_requests(mirror: MirrorThread) -> list[str]:
    return [path for _, path in mirror.requests if path.startswith("/xet/")]


def upstream_cas_requests(hub: HubEmulator) -> tuple[int, int]:
    records = hub.requests
    return (
        sum("/v1/reconstructions/" in r.path for r in records),
        sum(r.path.startswith("/xorbs/") for r in records),
    )


def test_hf_xet_downloads_through_the_mirror_as_its_cas(
    hub: HubEmulator, serving: MirrorThread, tmp_path: Path
) -> None:
    out = run_client(serving.url, script("org/m", None), tmp_path / "first", timeout=90)
    assert out["weights"] == sha(WEIGHTS)
    assert out["snapshot"] == {path: sha(data) for path, data in FILES.items()}
    asked = mirror_cas_requests(serving)
    assert any(p.startswith("/xet/v1/reconstructions/") for p in asked)
    assert any(p.startswith("/xet/chunks/") for p in asked)
    # The mirror filled from the upstream's CAS; the client never reached it.
    reconstructions, xorbs = upstream_cas_requests(hub)
    assert reconstructions >= 2 and xorbs >= 2
    assert not any(r.headers.get("user-agent", "").startswith("hf_xet") for r in hub.requests)
    serving.settle()
    # A second client, fresh cache: served from the mirror's cache, nothing from upstream's CAS.
    hub.clear_requests()
    out = run_client(serving.url, script("org/m", None), tmp_path / "second", timeout=90)
    assert out["weights"] == sha(WEIGHTS)
    assert upstream_cas_requests(hub) == (0, 0)
    # Plain HTTP reads the same cache.
    status, headers, body = send(serving.url, "GET", "/org/m/resolve/main/model.safetensors")
    assert status == 200 and headers["X-Cache"] == "HIT" and body == WEIGHTS


def test_a_gated_repo_keeps_its_per_token_isolation(hub: HubEmulator, serving: MirrorThread, tmp_path: Path) -> None:
    out = run_client(serving.url, script("org/gated", TOKEN), tmp_path / "good", timeout=90)
    assert out["weights"] == sha(WEIGHTS)
    serving.settle()
    refused = """
out["none"] = err(hf_hub_download, "org/gated", "model.safetensors")
out["bad"] = err(hf_hub_download, "org/gated", "model.safetensors", token="hf_bad")
"""
    out = run_client(serving.url, refused, tmp_path / "bad", timeout=90)
    assert out["none"] is not None and out["bad"] is not None
    # A CAS token for one repo reads nothing of another, and a forged one reads nothing at all.
    token_answer = send(serving.url, "GET", "/api/models/org/m/xet-read-token/main")
    access = json.loads(token_answer[2])["accessToken"]
    gated = hub.get_repo("model", "org/gated")
    assert gated is not None
    reconstruction = f"/xet/v1/reconstructions/{gated.commits[gated.head()].files['model.safetensors'].xet_hash}"
    status, _, _ = send(serving.url, "GET", reconstruction, {"Authorization": f"Bearer {access}"})
    assert status == 404  # not a file of org/m: nothing says whether it exists elsewhere
    forged = access[:-4] + ("AAAA" if not access.endswith("AAAA") else "BBBB")
    status, _, _ = send(serving.url, "GET", reconstruction, {"Authorization": f"Bearer {forged}"})
    assert status == 401
    assert send(serving.url, "GET", "/api/models/org/gated/xet-read-token/main")[0] == 401


def test_chunk_urls_must_be_signed(serving: MirrorThread, tmp_path: Path) -> None:
    run_client(serving.url, script("org/m", None), tmp_path / "c", timeout=90)
    serving.settle()
    paths = [p for p in mirror_cas_requests(serving) if p.startswith("/xet/chunks/")]
    assert paths
    path, _, query = paths[0].partition("?")
    assert send(serving.url, "GET", path)[0] == 403
    assert send(serving.url, "GET", f"{path}?{query.replace('sig=', 'sig=x')}")[0] == 403


@pytest.mark.parametrize(
    ("method", "path", "headers", "status"),
    [
        ("GET", "/xet/v1/reconstructions/" + "a" * 64, {}, 401),
        ("GET", "/xet/v1/reconstructions/xyz", {"Authorization": "Bearer hmx1.e30.x"}, 401),
        ("GET", "/xet/v2/reconstructions/" + "a" * 64, {}, 404),
        ("PUT", "/xet/v1/reconstructions/" + "a" * 64, {}, 405),
        ("GET", "/xet/chunks/" + "a" * 64 + "/0", {}, 403),
        ("GET", "/xet/chunks/../0?expires=1&sig=x", {}, 403),
        ("GET", "/xet/nothing", {}, 404),
    ],
)
def test_bad_cas_requests(serving: MirrorThread, method: str, path: str, headers: dict[str, str], status: int) -> None:
    got, answer, _ = send(serving.url, method, path, headers)
    assert got == status and answer.get("X-Error-Message")


@settings(max_examples=300, derandomize=True, database=None, deadline=None)
@given(token=st.text(max_size=300), path=st.text(max_size=80), expires=st.text(max_size=12), sig=st.text(max_size=50))
def test_tokens_and_signatures_never_raise(token: str, path: str, expires: str, sig: str) -> None:
    secret = b"s" * 32
    assert tokens.check(secret, token) is None
    assert tokens.path_signed(secret, path, expires, sig) is False
    issued = tokens.issue(secret, "model", "org/m", 2**40)
    assert tokens.check(secret, issued) == tokens.Grant("model", "org/m", 2**40)
    assert tokens.check(b"t" * 32, issued) is None
    assert tokens.check(secret, issued, now=2**40) is None


def test_cached_files_are_served_over_xet_with_the_upstream_down(
    hub: HubEmulator, serving: MirrorThread, tmp_path: Path
) -> None:
    run_client(serving.url, script("org/m", None), tmp_path / "warm", timeout=90)
    serving.settle()
    hub.faults.down()
    before = len(mirror_cas_requests(serving))
    out = run_client(serving.url, script("org/m", None), tmp_path / "offline", timeout=90)
    assert out["weights"] == sha(WEIGHTS)
    assert any(p.startswith("/xet/chunks/") for p in mirror_cas_requests(serving)[before:])


def test_a_file_evicted_since_is_filled_again(hub: HubEmulator, serving: MirrorThread, tmp_path: Path) -> None:
    run_client(serving.url, script("org/m", None), tmp_path / "warm", timeout=90)
    serving.settle()
    blob = keys.blob_key(sha(WEIGHTS))
    serving.call(serving.storage.delete(blob))
    hub.clear_requests()
    out = run_client(serving.url, script("org/m", None), tmp_path / "again", timeout=90)
    assert out["weights"] == sha(WEIGHTS)
    assert upstream_cas_requests(hub)[1] >= 1  # its chunks came from upstream again


def test_the_access_log_says_whether_a_reconstruction_needed_a_fill(
    serving: MirrorThread, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.INFO, logger="mirror.access")
    xet_hash = send(serving.url, "HEAD", "/org/m/resolve/main/model.safetensors")[1]["X-Xet-Hash"]
    head = send(serving.url, "GET", "/api/models/org/m/xet-read-token/main")
    token = json.loads(head[2])["accessToken"]
    path = f"/xet/v1/reconstructions/{xet_hash}"
    for _ in range(2):
        assert send(serving.url, "GET", path, {"Authorization": f"Bearer {token}"})[0] == 200
        serving.settle()  # the first answer comes as soon as the fill knows the terms; the fill goes on
    lines = [r.getMessage() for r in caplog.records if "/xet/v1/reconstructions/" in r.getMessage()]
    assert [line.split("cache=")[1].split()[0] for line in lines] == ["miss", "hit"]
    assert serving.metric("hub_mirror_cache_lookups_total", kind="metadata", result="miss") >= 1
    assert serving.metric("hub_mirror_requests_total", route="xet_reconstruction") == 2


def test_older_clients_and_plain_http_tools_read_what_hf_xet_cached(
    hub: HubEmulator, serving: MirrorThread, tmp_path: Path, old_python: str
) -> None:
    """The same cache, the other way in: after hf_xet filled it through the mirror's CAS, the older
    huggingface_hub (0.36, without hf_xet: it falls back to HTTP), curl and aria2c (several
    connections, by Range) get the same bytes, and the upstream sees no request for them."""
    run_client(serving.url, script("org/m", None), tmp_path / "xet", timeout=90)
    serving.settle()
    hub.clear_requests()
    old = run_client(serving.url, script("org/m", None), tmp_path / "old", python=old_python, timeout=120)
    assert old["weights"] == sha(WEIGHTS)
    url = f"{serving.url}/org/m/resolve/main/model.safetensors"
    fetched = run(tool("curl"), "-fsS", "-o", str(tmp_path / "curl.bin"), url)
    assert fetched.returncode == 0, fetched.stderr
    aria = ("--no-conf=true", "-x", "4", "-s", "4", "-k", "1M", "--file-allocation=none", "--max-tries=1")
    fetched = run(tool("aria2c"), *aria, "-d", str(tmp_path), "-o", "aria.bin", url)
    assert fetched.returncode == 0, fetched.stdout[-2000:]
    assert sha((tmp_path / "curl.bin").read_bytes()) == sha((tmp_path / "aria.bin").read_bytes()) == sha(WEIGHTS)
    assert not [r.path for r in hub.requests if "model.safetensors" in r.path or r.path.startswith("/xorbs/")]
