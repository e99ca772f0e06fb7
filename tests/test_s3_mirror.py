"""The mirror on the S3 backend, against a real object store (SeaweedFS) and the Hub emulator.

Cold and warm downloads through urllib and the real huggingface_hub client, two replicas sharing
one bucket, and the object store killed mid-fill and brought back while the mirror keeps running.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mirror.cache import keys
from mirror.cache.blobs import fill as fill_module
from mirror.config import ConfigError, load_config
from mirror.storage.s3 import MIN_PART_SIZE
from testbed.hubemu import HubEmulator, sha256_hex
from testbed.mirror_server import MirrorProcess, MirrorThread, free_port
from testbed.s3server import S3Server
from tests.support.client import run_client
from tests.support.git import lfs_batch
from tests.support.mirrors import start_mirror, use_test_s3_credentials

BUCKET = "hub-mirror"
MIB = 1024 * 1024
# Over one part, so the fill goes through a multipart upload; the small one is a single PUT.
BIG = os.urandom(MIN_PART_SIZE + MIB + 123)
SMALL = os.urandom(300_000)
CONFIG = b'{"model_type": "tiny", "hidden_size": 8}'


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = S3Server(tmp_path_factory.mktemp("seaweedfs")).start()
    try:
        server.create_bucket(BUCKET)
        yield server
    finally:
        server.close()


@pytest.fixture(autouse=True)
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    use_test_s3_credentials(monkeypatch)


def s3_settings(server: S3Server, prefix: str, **settings: Any) -> dict[str, Any]:
    return {
        "backend": "s3",
        "s3_endpoint": server.endpoint,
        "s3_bucket": BUCKET,
        "s3_prefix": prefix,
        "s3_part_size": MIN_PART_SIZE,
        **settings,
    }


def s3_serve_args(hub: HubEmulator, server: S3Server, work: Path, prefix: str) -> list[str]:
    """`hub-mirror serve` flags for the emulator upstream and an S3 cache in the test bucket."""
    return [
        "--upstream",
        hub.url,
        "--cache-dir",
        str(work),
        "--storage",
        "s3",
        "--s3-endpoint",
        server.endpoint,
        "--s3-bucket",
        BUCKET,
        "--s3-prefix",
        prefix,
    ]


def s3_mirror(hub: HubEmulator, server: S3Server, tmp_path: Path, prefix: str, **settings: Any) -> MirrorThread:
    return start_mirror(
        hub.url, tmp_path / f"work-{uuid.uuid4().hex[:8]}", storage=s3_settings(server, prefix, **settings)
    )


def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def fetch_together(urls: list[str]) -> list[tuple[int, bytes]]:
    """(status, body) of each URL, all requested at once from threads of their own."""
    results: list[Any] = [None] * len(urls)

    def get(i: int) -> None:
        results[i] = fetch(urls[i])[:2]

    threads = [threading.Thread(target=get, args=(i,)) for i in range(len(urls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def object_keys(server: S3Server, prefix: str) -> list[str]:
    page = server.client().list_objects_v2(Bucket=BUCKET, Prefix=prefix + "/")
    return [item["Key"][len(prefix) + 1 :] for item in page.get("Contents", [])]


def unfinished_uploads(server: S3Server, prefix: str) -> list[str]:
    page = server.client().list_multipart_uploads(Bucket=BUCKET, Prefix=prefix + "/")
    return [upload["Key"] for upload in page.get("Uploads", [])]


def cdn_gets(hub: HubEmulator) -> int:
    return hub.count(method="GET", origin="cdn")


def test_cold_and_warm_downloads_through_s3(hub: HubEmulator, s3: S3Server, tmp_path: Path) -> None:
    hub.add_repo("model", "org/s3", {"a.safetensors": BIG, "b.safetensors": SMALL, "config.json": CONFIG})
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    mirror = s3_mirror(hub, s3, tmp_path, prefix)
    try:
        url = f"{mirror.url}/org/s3/resolve/main"
        # a.safetensors: cold through urllib, warm through huggingface_hub.
        status, body, headers = fetch(f"{url}/a.safetensors")
        assert (status, body == BIG) == (200, True)
        assert headers["X-Linked-Etag"].strip('"') == sha256_hex(BIG)
        assert cdn_gets(hub) == 1
        status, body, _ = fetch(f"{url}/a.safetensors")
        assert (status, body == BIG, cdn_gets(hub)) == (200, True, 1)
        # A range across the boundary of the first multipart part.
        first, last = MIN_PART_SIZE - 10, MIN_PART_SIZE + 9
        status, body, headers = fetch(f"{url}/a.safetensors", {"Range": f"bytes={first}-{last}"})
        assert (status, body) == (206, BIG[first : last + 1])
        assert headers["Content-Range"] == f"bytes {first}-{last}/{len(BIG)}"

        # b.safetensors and config.json: cold through huggingface_hub, warm through urllib.
        out = run_client(
            mirror.url,
            """
            out["a"] = hf_hub_download("org/s3", "a.safetensors")
            out["b"] = hf_hub_download("org/s3", "b.safetensors")
            out["c"] = hf_hub_download("org/s3", "config.json")
            """,
            tmp_path / "hf",
        )
        assert Path(out["a"]).read_bytes() == BIG
        assert Path(out["b"]).read_bytes() == SMALL
        assert Path(out["c"]).read_bytes() == CONFIG
        assert cdn_gets(hub) == 2  # only b.safetensors was new (config.json comes from the Hub origin)
        assert fetch(f"{url}/b.safetensors")[:2] == (200, SMALL)
        assert fetch(f"{url}/config.json")[:2] == (200, CONFIG)
        assert cdn_gets(hub) == 2

        mirror.settle()
        stored = object_keys(s3, prefix)
        assert keys.blob_key(sha256_hex(BIG)) in stored and keys.blob_key(sha256_hex(SMALL)) in stored
        assert unfinished_uploads(s3, prefix) == []
        assert fetch(f"{mirror.url}/readyz")[0] == 200
    finally:
        mirror.stop()


def test_presigned_redirects_send_clients_to_the_object_store(
    hub: HubEmulator, s3: S3Server, tmp_path: Path, old_python: str
) -> None:
    repo = hub.add_repo("model", "org/direct", {"w.safetensors": BIG, "config.json": CONFIG})
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    mirror = s3_mirror(hub, s3, tmp_path, prefix, s3_presigned_redirects=True, s3_presigned_expiry=600)
    try:
        url = f"{mirror.url}/org/direct/resolve/main/w.safetensors"
        # Not cached yet: the mirror fills and streams the bytes itself.
        status, body, headers = fetch(url)
        assert (status, body == BIG, headers["X-Cache"]) == (200, True, "MISS")
        mirror.settle()

        # Cached: HEAD is still answered by the mirror, a GET is sent to the object store with
        # the headers the HF client reads from the Hub's own CDN redirects.
        conn = http.client.HTTPConnection("127.0.0.1", int(mirror.url.rsplit(":", 1)[1]), timeout=30)
        conn.request("HEAD", "/org/direct/resolve/main/w.safetensors")
        head = conn.getresponse()
        head.read()
        assert head.status == 200 and head.headers["Content-Length"] == str(len(BIG))
        conn.request("GET", "/org/direct/resolve/main/w.safetensors", headers={"Range": "bytes=10-"})
        found = conn.getresponse()
        found.read()
        conn.close()
        assert found.status == 302
        location = found.headers["Location"]
        assert location.startswith(f"{s3.endpoint}/{BUCKET}/{prefix}/{keys.blob_key(sha256_hex(BIG))}?")
        assert "X-Amz-Signature=" in location and "X-Amz-Expires=600" in location
        assert found.headers["X-Linked-Etag"] == f'"{sha256_hex(BIG)}"'
        assert found.headers["X-Linked-Size"] == str(len(BIG))
        assert found.headers["X-Repo-Commit"] == repo.head()
        assert "Content-Range" not in found.headers
        # The presigned URL serves ranges and names the file, with no credentials of the client's.
        status, body, headers = fetch(location, {"Range": "bytes=10-"})
        assert (status, body == BIG[10:]) == (206, True)
        assert 'filename="w.safetensors"' in headers["Content-Disposition"]

        # The real clients, new and old, with a token: they follow the redirect and drop their
        # Authorization header on leaving the mirror's origin (S3 would refuse a second auth).
        script = """
            out["w"] = hf_hub_download("org/direct", "w.safetensors")
            out["c"] = hf_hub_download("org/direct", "config.json")
        """
        for python, home in ((sys.executable, "hf-new"), (old_python, "hf-old")):
            out = run_client(mirror.url, script, tmp_path / home, python=python, env={"HF_TOKEN": "hf_user"})
            assert Path(out["w"]).read_bytes() == BIG
            assert Path(out["c"]).read_bytes() == CONFIG
            assert Path(out["w"]).resolve().name == sha256_hex(BIG)
        # config.json is not LFS: served by the mirror. Only the first fill went upstream.
        status, body, headers = fetch(f"{mirror.url}/org/direct/resolve/main/config.json")
        assert (status, body, headers["X-Cache"]) == (200, CONFIG, "HIT")
        assert cdn_gets(hub) == 1
        metrics = fetch(f"{mirror.url}/metrics")[1].decode()
        assert "hub_mirror_object_store_redirects_total 3.0" in metrics
    finally:
        mirror.stop()


def test_two_replicas_share_one_bucket(hub: HubEmulator, s3: S3Server, tmp_path: Path) -> None:
    hub.add_repo("model", "org/shared", {"w.safetensors": BIG, "notes.txt": b"plain file"})
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    first, second = s3_mirror(hub, s3, tmp_path, prefix), s3_mirror(hub, s3, tmp_path, prefix)
    try:
        for name, data in (("w.safetensors", BIG), ("notes.txt", b"plain file")):
            assert fetch(f"{first.url}/org/shared/resolve/main/{name}")[:2] == (200, data)
        first.settle()  # the blobs are published a moment after their last byte went out
        cdn, heads = cdn_gets(hub), hub.count(method="HEAD", path_contains="/resolve/")
        assert cdn == 1
        # The second replica finds the file entries and the blobs the first one stored: it asks
        # upstream only which commit main is, never for a file's metadata or bytes.
        for name, data in (("w.safetensors", BIG), ("notes.txt", b"plain file")):
            assert fetch(f"{second.url}/org/shared/resolve/main/{name}")[:2] == (200, data)
        out = run_client(second.url, 'out["w"] = hf_hub_download("org/shared", "w.safetensors")', tmp_path / "hf")
        assert Path(out["w"]).read_bytes() == BIG
        assert cdn_gets(hub) == cdn
        assert hub.count(method="HEAD", path_contains="/resolve/") == heads
        assert second.fills_started() == 0
    finally:
        first.stop()
        second.stop()


def replica(hub: HubEmulator, s3: S3Server, tmp_path: Path, prefix: str) -> MirrorThread:
    """A mirror on the shared bucket that advertises itself to the others (fill leases on)."""
    port = free_port()
    return start_mirror(
        hub.url,
        tmp_path / f"work-{uuid.uuid4().hex[:8]}",
        port,
        server={"advertise_url": f"http://127.0.0.1:{port}"},
        storage=s3_settings(s3, prefix),
    )


def metric(url: str, sample: str) -> float:
    for line in fetch(f"{url}/metrics")[1].decode().splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    return 0.0


def test_replicas_with_fill_leases_fetch_a_blob_from_upstream_once(
    hub: HubEmulator, s3: S3Server, tmp_path: Path
) -> None:
    hub.add_repo("model", "org/lease", {"w.safetensors": BIG})
    hub.faults.throttle(4 * MIB)  # about 1.5 s: all four requests overlap
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    replicas = [replica(hub, s3, tmp_path, prefix) for _ in range(2)]
    try:
        results = fetch_together([f"{replicas[i % 2].url}/org/lease/resolve/main/w.safetensors" for i in range(4)])
        assert results == [(200, BIG)] * 4
        # One replica won the lease and filled; the other streamed its clients' bytes from it.
        assert cdn_gets(hub) == 1
        streamed = [metric(m.url, 'hub_mirror_peer_fills_total{outcome="streamed"}') for m in replicas]
        assert sorted(streamed)[0] == 0 and sorted(streamed)[1] >= 1
        assert sum(m.fills_started() for m in replicas) == 1
        for m in replicas:
            m.settle()
        stored = object_keys(s3, prefix)
        assert keys.blob_key(sha256_hex(BIG)) in stored
        assert not [k for k in stored if k.startswith("leases/")], "the lease is released after the publish"
        assert unfinished_uploads(s3, prefix) == []
    finally:
        for m in replicas:
            m.stop()


def test_replicas_fill_an_lfs_object_from_upstream_once(hub: HubEmulator, s3: S3Server, tmp_path: Path) -> None:
    """git-lfs on two replicas: the batch on one, downloads on both; the peer streams the holder's fill."""
    hub.add_repo("model", "org/lfs-lease", {"w.bin": BIG}, lfs=["w.bin"])
    hub.faults.throttle(4 * MIB)
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    replicas = [replica(hub, s3, tmp_path, prefix) for _ in range(2)]
    try:
        oid = sha256_hex(BIG)
        status, _, answer = lfs_batch(replicas[0].url, "org/lfs-lease", [(oid, len(BIG))])
        assert status == 200 and "error" not in answer["objects"][0]
        path = f"/org/lfs-lease.git/info/lfs/objects/{oid}"
        results = fetch_together([f"{replicas[i % 2].url}{path}" for i in range(4)])
        assert results == [(200, BIG)] * 4
        assert cdn_gets(hub) == 1
        assert sum(m.fills_started() for m in replicas) == 1
        streamed = [metric(m.url, 'hub_mirror_peer_fills_total{outcome="streamed"}') for m in replicas]
        assert max(streamed) >= 1  # from the holder's object route
        for m in replicas:
            m.settle()
        assert keys.blob_key(oid) in object_keys(s3, prefix)
    finally:
        for m in replicas:
            m.stop()


def test_a_replica_takes_over_the_fill_of_one_that_died(hub: HubEmulator, s3: S3Server, tmp_path: Path) -> None:
    hub.add_repo("model", "org/orphan", {"w.safetensors": BIG})
    hub.faults.throttle(2 * MIB)
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    port = free_port()
    holder = MirrorProcess(
        *s3_serve_args(hub, s3, tmp_path / "holder", prefix),
        env={
            "HUB_MIRROR_SERVER_ADVERTISE_URL": f"http://127.0.0.1:{port}",
            "HUB_MIRROR_STORAGE_S3_PART_SIZE": str(MIN_PART_SIZE),
        },
        port=port,
    ).wait_ready()
    other = replica(hub, s3, tmp_path, prefix)
    path = "/org/orphan/resolve/main/w.safetensors"
    try:
        with contextlib.ExitStack() as stack:
            first = stack.enter_context(urllib.request.urlopen(holder.url + path, timeout=60))
            deadline = time.monotonic() + 10
            while not [k for k in object_keys(s3, prefix) if k.startswith("leases/")]:
                assert time.monotonic() < deadline, "the holder took no lease"
                time.sleep(0.05)
            # The other replica streams from the holder's fill ...
            second = stack.enter_context(urllib.request.urlopen(other.url + path, timeout=60))
            received = second.read(MIB)
            assert metric(other.url, 'hub_mirror_peer_fills_total{outcome="streamed"}') == 1
            # ... until the holder dies: the body is cut, and what arrived is right.
            holder.kill()
            with contextlib.suppress(http.client.IncompleteRead, ConnectionError):
                while chunk := second.read(MIB):
                    received += chunk
            assert len(received) < len(BIG) and received == BIG[: len(received)]
            with contextlib.suppress(http.client.IncompleteRead, ConnectionError):
                first.read()
        # Asked again, the other replica finds the lease live but its holder gone: it fills itself.
        hub.faults.clear()
        assert fetch(other.url + path)[:2] == (200, BIG)
        assert metric(other.url, 'hub_mirror_peer_fills_total{outcome="unreachable"}') == 1
        assert other.fills_started() == 1
        other.settle()
        assert keys.blob_key(sha256_hex(BIG)) in object_keys(s3, prefix)
    finally:
        other.stop()
        holder.stop()


def test_concurrent_cold_fills_on_two_replicas_publish_one_whole_blob(
    hub: HubEmulator, s3: S3Server, tmp_path: Path
) -> None:
    hub.add_repo("model", "org/race", {"w.safetensors": BIG})
    hub.faults.throttle(8 * MIB)  # both fills overlap
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    mirrors = [s3_mirror(hub, s3, tmp_path, prefix) for _ in range(2)]
    try:
        results = fetch_together([f"{m.url}/org/race/resolve/main/w.safetensors" for m in mirrors])
        assert results == [(200, BIG), (200, BIG)]
        # Without a cross-replica lease each replica may fetch once; the last upload completed wins
        # whole, and neither leaves an unfinished upload behind.
        assert cdn_gets(hub) <= 2
        for mirror in mirrors:
            mirror.settle()
        body = s3.client().get_object(Bucket=BUCKET, Key=f"{prefix}/{keys.blob_key(sha256_hex(BIG))}")["Body"].read()
        assert body == BIG
        assert unfinished_uploads(s3, prefix) == []
    finally:
        for mirror in mirrors:
            mirror.stop()


def _ready(mirror: MirrorThread) -> tuple[int, dict[str, Any]]:
    status, body, _ = fetch(f"{mirror.url}/readyz")
    return status, json.loads(body)


def test_object_store_killed_mid_fill_and_restarted(hub: HubEmulator, tmp_path: Path) -> None:
    big = os.urandom(3 * MIN_PART_SIZE)
    hub.add_repo("model", "org/crash", {"w.safetensors": big})
    hub.faults.throttle(6 * MIB)  # about 2.5 s for the whole file: time to kill the store mid-way
    server = S3Server(tmp_path / "seaweedfs").start()
    prefix = "crash"
    mirror = None
    try:
        server.create_bucket(BUCKET)
        mirror = s3_mirror(hub, server, tmp_path, prefix)
        url = f"{mirror.url}/org/crash/resolve/main/w.safetensors"
        blob = keys.blob_key(sha256_hex(big))

        with urllib.request.urlopen(url, timeout=60) as resp:
            assert resp.status == 200 and resp.headers["Content-Length"] == str(len(big))
            # Past the first part, so the fill is in the middle of a multipart upload.
            received = resp.read(MIN_PART_SIZE + MIB)
            server.kill()
            # The fill fails at the S3 call that notices (a part upload, or completing the upload
            # once every byte arrived and matched). Before the hash matched, the mirror cuts the
            # body; after, the client has all the verified bytes and only the publish failed.
            # Either way it receives nothing but the right bytes.
            with contextlib.suppress(http.client.IncompleteRead, ConnectionError):
                while chunk := resp.read(MIB):
                    received += chunk
        assert received == big[: len(received)]

        # While the store is down: clear 5xx, for the blob and for readiness.
        status, body, headers = fetch(url)
        assert status == 503, body
        # The client is told the storage is unavailable; which endpoint and bucket is for the log.
        assert "storage is unavailable" in headers.get("X-Error-Message", "")
        assert server.endpoint not in headers.get("X-Error-Message", "")
        status, ready = _ready(mirror)
        assert (status, ready["storage"]) == (503, "unavailable")

        server.start()
        deadline = time.monotonic() + 30
        while _ready(mirror)[0] != 200:
            assert time.monotonic() < deadline, "the mirror did not recover after the store came back"
            time.sleep(0.2)
        # Nothing was half-published. The fill's upload could not be aborted while the store was
        # down, so it is still listed as unfinished (invisible to readers) ...
        assert blob not in object_keys(server, prefix)
        assert unfinished_uploads(server, prefix) == [f"{prefix}/{blob}"]

        # The same mirror process, without a restart, fills and serves the file again.
        hub.faults.clear()
        assert fetch(url)[:2] == (200, big)
        mirror.settle()
        assert blob in object_keys(server, prefix)
        assert fetch(url)[:2] == (200, big)

        # ... until a start that finds it older than storage.s3_stale_upload_age aborts it.
        mirror.stop()
        mirror = s3_mirror(hub, server, tmp_path, prefix, s3_stale_upload_age=0)
        assert unfinished_uploads(server, prefix) == []
        assert fetch(f"{mirror.url}/org/crash/resolve/main/w.safetensors")[:2] == (200, big)
    finally:
        if mirror is not None:
            mirror.stop()
        server.close()


def test_serve_flags_select_the_s3_backend(hub: HubEmulator, s3: S3Server, tmp_path: Path) -> None:
    hub.add_repo("model", "org/cli", {"w.safetensors": SMALL})
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    process = MirrorProcess(*s3_serve_args(hub, s3, tmp_path / "work", prefix), "--s3-region", "us-east-1").wait_ready()
    try:
        assert fetch(f"{process.url}/org/cli/resolve/main/w.safetensors")[:2] == (200, SMALL)
        process.settle()
        assert keys.blob_key(sha256_hex(SMALL)) in object_keys(s3, prefix)
        assert not (tmp_path / "work" / "objects").exists()  # nothing went to the local backend
    finally:
        process.stop()


@pytest.mark.parametrize(
    ("storage", "message"),
    [
        ({"backend": "s3"}, "storage.s3_bucket is required"),
        ({"backend": "s3", "s3_bucket": "Bad_Bucket"}, "not a valid bucket name"),
        ({"backend": "s3", "s3_bucket": "ok-bucket", "s3_endpoint": "minio:9000"}, "storage.s3_endpoint"),
        ({"backend": "s3", "s3_bucket": "ok-bucket", "s3_prefix": "a/../b"}, "storage.s3_prefix"),
        ({"backend": "s3", "s3_bucket": "ok-bucket", "s3_part_size": 1024}, "storage.s3_part_size"),
        (
            {"backend": "s3", "s3_bucket": "ok-bucket", "s3_public_endpoint": "s3.internal"},
            "storage.s3_public_endpoint",
        ),
        ({"backend": "s3", "s3_bucket": "ok-bucket", "s3_presigned_expiry": 0}, "storage.s3_presigned_expiry"),
        ({"backend": "s3", "s3_bucket": "ok-bucket", "s3_parts_in_flight": 0}, "storage.s3_parts_in_flight"),
        ({"backend": "gcs"}, "storage.backend must be 'local' or 's3'"),
    ],
)
def test_invalid_s3_settings_are_rejected(storage: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, {"storage": storage}, environ={})


def test_s3_settings_from_environment() -> None:
    config = load_config(
        None,
        None,
        environ={
            "HUB_MIRROR_STORAGE_BACKEND": "s3",
            "HUB_MIRROR_STORAGE_S3_BUCKET": "hub-cache",
            "HUB_MIRROR_STORAGE_S3_PREFIX": "/mirrors/prod/",
            "HUB_MIRROR_STORAGE_S3_PART_SIZE": str(16 * MIB),
        },
    )
    storage = config.storage
    assert (storage.backend, storage.s3_bucket, storage.s3_prefix) == ("s3", "hub-cache", "mirrors/prod")
    assert storage.s3_part_size == 16 * MIB


@pytest.fixture
def never_wait_for_the_publish(monkeypatch: pytest.MonkeyPatch) -> None:
    """Late followers take the upstream catch-up path, whatever the fill's expected end."""
    monkeypatch.setattr(fill_module, "FOLLOWER_WAIT", -1.0)


@pytest.mark.usefixtures("never_wait_for_the_publish")
def test_late_follower_of_an_s3_fill_gets_every_byte(hub: HubEmulator, s3: S3Server, tmp_path: Path) -> None:
    big = os.urandom(4 * MIN_PART_SIZE)
    hub.add_repo("model", "org/late", {"w.safetensors": big})
    hub.faults.throttle(10 * MIB)  # about 2 s for the whole file
    mirror = s3_mirror(hub, s3, tmp_path, f"t-{uuid.uuid4().hex[:8]}")
    try:
        url = f"{mirror.url}/org/late/resolve/main/w.safetensors"
        with urllib.request.urlopen(url, timeout=60) as first:
            head = first.read(2 * MIN_PART_SIZE + MIB)  # the fill is now more than a part past byte 0
            status, body, _ = fetch(url)
            rest = first.read()
        assert head + rest == big
        assert (status, len(body), body == big) == (200, len(big), True)
    finally:
        mirror.stop()


@pytest.mark.usefixtures("never_wait_for_the_publish")
def test_late_follower_never_gets_bytes_the_fill_did_not_verify(
    hub: HubEmulator, s3: S3Server, tmp_path: Path
) -> None:
    """The late follower's bytes come from an upstream request of their own: corrupt that one only.

    Each block it is served must equal the fill's (which the blob's hash verifies), so the corrupt
    block is fetched again and the follower still gets exactly the file.
    """
    big = os.urandom(4 * MIN_PART_SIZE)
    hub.add_repo("model", "org/late", {"w.safetensors": big})
    hub.faults.throttle(10 * MIB)
    # The fill's own CDN request is left intact; the follower's catch-up request is corrupted.
    hub.faults.corrupt(path_contains="w.safetensors", offset=MIB + 7, skip=1, times=1)
    mirror = s3_mirror(hub, s3, tmp_path, f"t-{uuid.uuid4().hex[:8]}")
    try:
        url = f"{mirror.url}/org/late/resolve/main/w.safetensors"
        with urllib.request.urlopen(url, timeout=60) as first:
            head = first.read(2 * MIN_PART_SIZE + MIB)
            status, body, _ = fetch(url)
            rest = first.read()
        assert head + rest == big
        assert status == 200 and hashlib.sha256(body).hexdigest() == sha256_hex(big)
        assert hub.count(method="GET", origin="cdn", path_contains="w.safetensors") >= 3, "the bad block was refetched"
        assert metric(mirror.url, "hub_mirror_fill_catch_up_bytes_total") > 0
    finally:
        mirror.stop()


def test_a_replica_asking_mid_fill_costs_no_second_upstream_fetch(
    hub: HubEmulator, s3: S3Server, tmp_path: Path
) -> None:
    """The second replica's request lands in the middle of the first one's fill (the attack report
    measured 1.6-1.9 times the file from upstream): it streams from the holder, far behind the
    holder's in-memory window, and the holder must not fetch the file again for it."""
    size = 8 * MIN_PART_SIZE + 12345  # 40 MiB: many parts, so a late follower is far behind the window
    big = os.urandom(size)
    hub.add_repo("model", "org/stagger", {"w.safetensors": big})
    hub.faults.throttle(16 * MIB)  # about 2.5 s for the fill
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    first, second = (replica(hub, s3, tmp_path, prefix) for _ in range(2))
    try:
        url = "/org/stagger/resolve/main/w.safetensors"
        results: dict[str, tuple[int, bytes]] = {}
        early = threading.Thread(target=lambda: results.__setitem__("first", fetch(first.url + url)[:2]))
        early.start()
        deadline = time.monotonic() + 20
        while metric(first.url, "hub_mirror_upstream_bytes_total") < size / 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        results["second"] = fetch(second.url + url)[:2]
        early.join(60)
        assert results["first"] == (200, big) and results["second"] == (200, big)
        fetched = sum(metric(m.url, "hub_mirror_upstream_bytes_total") for m in (first, second))
        assert fetched <= 1.05 * size, f"upstream sent {fetched / size:.2f} times the file"
        assert cdn_gets(hub) == 1
    finally:
        first.stop()
        second.stop()


def stalled_holder(connections: int) -> str:
    """The URL of a replica that accepts `connections` requests, then drops them all at once (or
    after 10 s): the survivors find it dead at the same moment, which is when their takeovers race."""
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(10)

    def serve() -> None:
        accepted = []
        with server:
            try:
                while len(accepted) < connections:
                    conn, _ = server.accept()
                    accepted.append(conn)
            except OSError:
                pass
            for conn in accepted:
                conn.close()

    threading.Thread(target=serve, daemon=True).start()
    return f"http://127.0.0.1:{server.getsockname()[1]}"


def test_replicas_that_find_the_fill_holder_dead_fetch_the_blob_from_upstream_once(
    hub: HubEmulator, s3: S3Server, tmp_path: Path
) -> None:
    """The holder of a fill lease died mid-fill (found by the multi-replica test): both survivors
    find it unreachable at once and take the lease over. The last takeover wins; the other streams
    from the winner instead of fetching the blob a second time."""
    size = 6 * MIN_PART_SIZE
    big = os.urandom(size)
    hub.add_repo("model", "org/orphan", {"w.safetensors": big})
    hub.faults.throttle(12 * MIB)  # the fill runs a few seconds: both requests find it running
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    first, second = (replica(hub, s3, tmp_path, prefix) for _ in range(2))
    try:
        dead = stalled_holder(connections=2)  # a holder that dies for both at the same moment
        lease = {"owner": "dead-replica", "url": dead, "expires": time.time() + 60}
        lease_key = keys.fill_lease_key(keys.blob_key(sha256_hex(big)))
        first.call(first.storage.put_bytes(lease_key, json.dumps(lease).encode()))
        url = "/org/orphan/resolve/main/w.safetensors"
        results = fetch_together([first.url + url, second.url + url])
        assert results == [(200, big), (200, big)]
        assert cdn_gets(hub) == 1, "both survivors fetched the orphaned blob from upstream"
    finally:
        first.stop()
        second.stop()
