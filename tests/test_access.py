"""Gated and private repos: cached bytes only reach callers the upstream accepts."""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from testbed.hubemu import HubEmulator
from testbed.mirror_server import MirrorThread
from tests.support.client import run_client

ALICE = "hf_alice_has_access_0123456789"
WEIGHTS = b"w" * 50_000


def status_of(url: str, token: str | None = None) -> tuple[int, str | None]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as resp:
            resp.read()
            return resp.status, None
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("X-Error-Code")


@pytest.mark.parametrize("kind", ["gated", "private"])
def test_cached_bytes_need_an_accepted_token(
    hub: HubEmulator, mirror: MirrorThread, tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    hub.add_repo(
        "model",
        "org/secret",
        {"config.json": b"{}", "w.safetensors": WEIGHTS},
        gated="manual" if kind == "gated" else False,
        private=kind == "private",
        tokens=(ALICE,),
    )
    url = f"{mirror.url}/org/secret/resolve/main/w.safetensors"
    assert status_of(url, ALICE) == (200, None)  # fills the cache with Alice's token
    assert mirror.fills_started() == 1

    expected = "GatedRepo" if kind == "gated" else "RepoNotFound"
    anonymous = status_of(url)
    assert anonymous[0] == 401 and anonymous[1] == expected
    wrong = status_of(url, "hf_mallory")
    assert wrong[0] in (401, 403, 404) and wrong[1] == expected

    out = run_client(
        mirror.url,
        f"""
        out["anon"] = err(hf_hub_download, "org/secret", "w.safetensors", token=False)
        out["bad"] = err(hf_hub_download, "org/secret", "w.safetensors", token="hf_mallory")
        out["ok"] = open(hf_hub_download("org/secret", "w.safetensors", token="{ALICE}"), "rb").read() == b"w" * 50000
        """,
        tmp_path,
    )
    exc = "GatedRepoError" if kind == "gated" else "RepositoryNotFoundError"
    assert out == {"anon": exc, "bad": exc, "ok": True}

    # The token went to the upstream origin only: never to the CDN, never into the logs.
    assert any(r.headers.get("authorization") == f"Bearer {ALICE}" for r in hub.requests if r.origin == "hub")
    assert all("authorization" not in r.headers for r in hub.requests if r.origin == "cdn")
    assert ALICE not in caplog.text


def test_private_metadata_needs_a_token(hub: HubEmulator, mirror: MirrorThread) -> None:
    hub.add_repo("model", "org/private", {"config.json": b"{}"}, private=True, tokens=(ALICE,))
    api = f"{mirror.url}/api/models/org/private"
    assert status_of(api, ALICE)[0] == 200
    assert status_of(f"{api}/tree/main", ALICE)[0] == 200
    assert status_of(api) == (401, "RepoNotFound")
    assert status_of(f"{api}/tree/main")[0] == 401
    assert status_of(f"{api}/tree/main", "hf_mallory")[1] == "RepoNotFound"


def test_gated_metadata_is_public_like_the_hub(hub: HubEmulator, mirror: MirrorThread) -> None:
    hub.add_repo("model", "org/gated", {"config.json": b"{}"}, gated="auto", tokens=(ALICE,))
    assert status_of(f"{mirror.url}/api/models/org/gated")[0] == 200
    assert status_of(f"{mirror.url}/org/gated/resolve/main/config.json") == (401, "GatedRepo")


def test_access_decisions_are_cached_per_token(hub: HubEmulator, mirror: MirrorThread) -> None:
    hub.add_repo("model", "org/gated", {"config.json": b"{}"}, gated="manual", tokens=(ALICE,))
    url = f"{mirror.url}/org/gated/resolve/main/config.json"
    for _ in range(5):
        assert status_of(url, ALICE)[0] == 200
    assert hub.count(path_contains="auth-check") == 1


def test_access_cannot_be_verified_while_upstream_is_down(hub: HubEmulator, mirror: MirrorThread) -> None:
    hub.add_repo("model", "org/gated", {"config.json": b"{}"}, gated="manual", tokens=(ALICE,))
    url = f"{mirror.url}/org/gated/resolve/main/config.json"
    assert status_of(url, ALICE)[0] == 200
    hub.faults.down()
    assert status_of(url, ALICE)[0] == 200, "a fresh decision is still trusted"
    status, _ = status_of(url, "hf_new_token_never_checked")
    assert 500 <= status < 600, "an unverifiable token gets a 5xx, never the bytes"
    assert status_of(url)[0] == 401


@pytest.mark.parametrize("query", ["expand=siblings", "expand=siblings&expand=sha"])
@pytest.mark.parametrize("kind", ["gated", "private"])
def test_an_info_selection_never_opens_a_repo_to_other_tokens(
    hub: HubEmulator, mirror: MirrorThread, kind: str, query: str
) -> None:
    """`?expand=siblings` selects properties: the Hub's answer carries neither `private` nor `gated`.
    Read as a whole answer it would make the repo look public, and cached bytes would reach anyone."""
    hub.add_repo(
        "model",
        "org/secret",
        {"config.json": b"{}", "w.safetensors": WEIGHTS},
        gated="manual" if kind == "gated" else False,
        private=kind == "private",
        tokens=(ALICE,),
    )
    url = f"{mirror.url}/org/secret/resolve/main/w.safetensors"
    assert status_of(url, ALICE) == (200, None)
    selection = f"{mirror.url}/api/models/org/secret?{query}"
    request = urllib.request.Request(selection, headers={"Authorization": f"Bearer {ALICE}"})
    with urllib.request.urlopen(request, timeout=30) as resp:
        answer = json.loads(resp.read())
    # The caller's question answered, as the Hub answers it: no sha it did not select.
    assert "siblings" in answer and ("sha" in answer) == ("sha" in query) and "private" not in answer
    expected = "GatedRepo" if kind == "gated" else "RepoNotFound"
    assert status_of(url)[1] == expected
    assert status_of(url, "hf_mallory")[1] == expected


def test_an_info_selection_is_answered_like_the_hub(hub: HubEmulator, mirror: MirrorThread) -> None:
    hub.add_repo("model", "org/m", {"config.json": b"{}"})
    for query in ("expand=siblings", "expand=siblings&expand=sha", "expand=private"):
        direct = json.loads(urllib.request.urlopen(f"{hub.url}/api/models/org/m?{query}", timeout=30).read())
        mirrored = json.loads(urllib.request.urlopen(f"{mirror.url}/api/models/org/m?{query}", timeout=30).read())
        assert mirrored == direct, query
