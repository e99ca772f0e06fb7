"""Fuzzing the mirror's Xet CAS routes (`hub.xet: serve`) with hypothesis.

Whatever a client sends to the token route, the reconstructions and the chunk URLs, the mirror
answers below 500 with an error the HF client can read, and a valid token or signature is never
needed to learn anything but "refused". Bounded and reproducible: fixed example counts,
derandomized, no example database.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mirror.hub.appkeys import XET_SECRET
from mirror.xet import tokens
from testbed.hubemu import HubEmulator
from testbed.mirror_server import MirrorThread
from tests.support.http import send
from tests.support.mirrors import start_mirror

FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
DATA = os.urandom(200_000)


@pytest.fixture(scope="module")
def serving(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[HubEmulator, MirrorThread, str]]:
    with HubEmulator() as hub:
        hub.add_repo("model", "org/m", {"w.bin": DATA}, lfs=["w.bin"])
        mirror = start_mirror(
            hub.url, tmp_path_factory.mktemp("xet-fuzz") / "cache", upstream={"xet": True}, hub={"xet": "serve"}
        )
        try:
            status, headers, _ = send(mirror.url, "HEAD", "/org/m/resolve/main/w.bin", {})
            assert status == 200 and headers.get("X-Xet-Hash")
            yield hub, mirror, headers["X-Xet-Hash"]
        finally:
            mirror.stop()


segment = st.one_of(
    st.sampled_from(["", "v1", "v2", "reconstructions", "chunks", "telemetry", "0", "..", "%00", "a" * 64]),
    st.text(max_size=70).map(lambda t: quote(t, safe="")),
)
auth = st.one_of(
    st.none(),
    st.sampled_from(["Bearer ", "Bearer hmx1.e30.x", "Bearer hmx1..", "Basic Zm9vOmJhcg==", "Bearer hf_good"]),
    st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=200).map(lambda t: f"Bearer {t}"),
)
range_header = st.one_of(st.none(), st.sampled_from(["bytes=0-9", "bytes=9-0", "bytes=-5", "bytes=0-", "items=1-2"]))


@FUZZ
@given(
    method=st.sampled_from(["GET", "GET", "HEAD", "POST", "PUT", "DELETE"]),
    segments=st.lists(segment, min_size=1, max_size=4),
    query=st.sampled_from(["", "?expires=1&sig=x", "?expires=99999999999&sig=", "?expires=%C2%B9&sig=a"]),
    authorization=auth,
    byte_range=range_header,
)
def test_cas_routes(
    serving: tuple[HubEmulator, MirrorThread, str],
    method: str,
    segments: list[str],
    query: str,
    authorization: str | None,
    byte_range: str | None,
) -> None:
    _, mirror, _ = serving
    headers = {k: v for k, v in (("Authorization", authorization), ("Range", byte_range)) if v is not None}
    status, answer, _ = send(mirror.url, method, "/xet/" + "/".join(segments) + query, headers)
    assert status < 500, (segments, status)
    if status >= 400:
        assert answer.get("X-Error-Message")


@FUZZ
@given(authorization=auth, byte_range=range_header, file_hash=st.one_of(st.just(""), segment))
def test_reconstructions_with_a_real_token_or_none(
    serving: tuple[HubEmulator, MirrorThread, str], authorization: str | None, byte_range: str | None, file_hash: str
) -> None:
    _, mirror, real_hash = serving
    status, _, body = send(mirror.url, "GET", "/api/models/org/m/xet-read-token/main", {})
    assert status == 200
    token = json.loads(body)["accessToken"]
    headers = {"Authorization": authorization or f"Bearer {token}"}
    if byte_range is not None:
        headers["Range"] = byte_range
    status, answer, _ = send(mirror.url, "GET", f"/xet/v1/reconstructions/{file_hash or real_hash}", headers)
    assert status < 500
    if status >= 400:
        assert answer.get("X-Error-Message")


run_text = st.one_of(
    st.lists(st.integers(min_value=0, max_value=12), min_size=1, max_size=6).map(lambda r: "+".join(map(str, r))),
    st.sampled_from(["", "+", "0+", "+0", "0++1", "99999999", "123456789", "-1", "0x1", "1e3", "٣", "¹"]),
    st.text(alphabet="0123456789+", max_size=40),
    st.integers(min_value=250, max_value=300).map(lambda n: "+".join(["0"] * n)),
)


@FUZZ
@given(run=run_text, byte_range=range_header, method=st.sampled_from(["GET", "HEAD"]))
def test_signed_chunk_urls_with_any_run_of_terms(
    serving: tuple[HubEmulator, MirrorThread, str], run: str, byte_range: str | None, method: str
) -> None:
    """Behind a valid signature, whatever names the terms gets an answer below 500, and a 200 or 206
    carries exactly the bytes its headers promise."""
    _, mirror, _ = serving
    secret = mirror.call(mirror.part(XET_SECRET).get())
    path = f"/xet/chunks/{hashlib.sha256(DATA).hexdigest()}/{quote(run, safe='+')}"
    expires = int(time.time()) + 600
    signed = f"{path}?expires={expires}&sig={tokens.sign_path(secret, path, expires)}"
    status, answer, body = send(mirror.url, method, signed, {"Range": byte_range} if byte_range else {})
    assert status < 500, (run, status)
    if status in (200, 206) and method == "GET":
        assert len(body) == int(answer["Content-Length"])
    elif status >= 400:
        assert answer.get("X-Error-Message")


def test_the_fuzzed_mirror_still_serves(serving: tuple[HubEmulator, MirrorThread, str], tmp_path: Path) -> None:
    _, mirror, _ = serving
    status, _, body = send(mirror.url, "GET", "/org/m/resolve/main/w.bin", {})
    assert status == 200 and body == DATA
