"""Three real `hub-mirror serve` replicas on one S3 bucket behind nginx, as in docs/deploy.md.

Every request goes through nginx (round-robin, testbed/nginx.py); the replicas share one SeaweedFS
bucket and prefix and advertise themselves to each other (fill leases: one upstream fetch between
replicas, docs/s3.md). Three scenarios, each on a cold repo of its own:

- 16 real huggingface_hub clients download one snapshot at once: every file right everywhere, and
  each file fetched from upstream once across the three replicas.
- The same while one replica is SIGKILLed in the middle of its fills: clients retry and resume on
  the live replicas, which take the dead one's fills over; nothing corrupt is stored.
- A rolling restart (SIGTERM, exit, start again on the same port) under a steady load of GETs:
  no request fails before its body began; a body cut by a restart is short, never wrong, and its
  Range retry completes it.

The figures (clients, upstream bytes, requests, failures) are printed: run with `-s` to see them.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest

from mirror.storage.s3 import MIN_PART_SIZE
from testbed.hubemu import HubEmulator, sha256_hex
from testbed.hubemu.repos import git_blob_sha1
from testbed.mirror_server import MirrorProcess, free_port, metric
from testbed.nginx import LoadBalancer
from testbed.s3server import ACCESS_KEY, SECRET_KEY, S3Server
from tests.conftest import SHARED_BUCKET
from tests.support.client import run_client

pytestmark = pytest.mark.skipif(
    not LoadBalancer.available(), reason="nginx is not installed (scripts/test.sh installs the Debian package)"
)

MIB = 1024 * 1024
REPLICAS = 3
CLIENTS = 16
GRACE = 3.0  # server.shutdown_grace of every replica (seconds)
FIGURES: dict[str, Any] = {}


def report(scenario: str, **figures: Any) -> None:
    FIGURES[scenario] = figures
    print(f"\n[load-balancer] {scenario}: " + json.dumps(figures, sort_keys=True))


# -- the cluster ---------------------------------------------------------------------------------


class Replica:
    """One `hub-mirror serve` on a fixed port, which it keeps across restarts; its output goes to a file.

    (MirrorProcess keeps the output in a pipe until exit: a busy replica would fill it and block.)
    """

    def __init__(self, name: str, args: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = args
        self.env = {**env, "HUB_MIRROR_SERVER_ADVERTISE_URL": self.url}
        self.log = log
        self.process: MirrorProcess | None = None
        self.starts = 0

    def start(self) -> Replica:
        self.starts += 1
        with self.log.open("a") as out:
            out.write(f"===== start {self.starts} =====\n")
        self.process = MirrorProcess(*self.args, env=self.env, port=self.port)
        assert self.process.proc.stdout is not None
        threading.Thread(target=self._drain, args=(self.process.proc.stdout,), daemon=True).start()
        return self

    def _drain(self, stream: IO[str]) -> None:
        with self.log.open("a") as out:
            for line in stream:
                out.write(line)
                out.flush()

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.proc.poll() is None

    def wait_ready(self, timeout: float = 30) -> float:
        """Seconds until /readyz answers 200."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            assert self.alive, f"{self.name} exited:\n{self.log_tail()}"
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as resp:
                    if resp.status == 200:
                        return time.monotonic() - started
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"{self.name} not ready after {timeout}s:\n{self.log_tail()}")

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()

    def terminate(self) -> tuple[int, float]:
        """SIGTERM, and wait for the exit: (exit status, seconds it took)."""
        assert self.process is not None
        started = time.monotonic()
        self.process.proc.send_signal(signal.SIGTERM)
        try:
            code = self.process.proc.wait(GRACE + 20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise AssertionError(f"{self.name} did not exit within the grace:\n{self.log_tail()}") from None
        return code, time.monotonic() - started

    def metric(self, name: str, **labels: str) -> float:
        return metric(self.url, name, **labels)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def log_tail(self, size: int = 3000) -> str:
        return self.log_text()[-size:]


@dataclass
class Cluster:
    hub: HubEmulator
    s3: S3Server
    prefix: str
    replicas: list[Replica]
    lb: LoadBalancer

    @property
    def url(self) -> str:
        return self.lb.url

    def live(self) -> list[Replica]:
        return [r for r in self.replicas if r.alive]

    def ensure_up(self) -> None:
        for r in self.replicas:
            if not r.alive:
                r.start().wait_ready()
        time.sleep(self.lb.fail_timeout + 0.2)  # nginx tries a replica it marked failed again after this

    def upstream_bytes(self) -> float:
        return sum(r.metric("hub_mirror_upstream_bytes_total") for r in self.live())

    def settle(self) -> None:
        for r in self.live():
            deadline = time.monotonic() + 30
            while r.metric("hub_mirror_fills_in_flight") > 0:
                assert time.monotonic() < deadline, f"{r.name}: fills still in flight"
                time.sleep(0.05)

    def logs(self) -> str:
        parts = [f"--- {r.name} ({r.url}) ---\n{r.log_tail()}" for r in self.replicas]
        return "\n".join(parts) + f"\n--- nginx error.log ---\n{self.lb.error_log()[-3000:]}"


@pytest.fixture(scope="module")
def cluster(shared_s3: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    work = tmp_path_factory.mktemp("load-balancer")
    # Small listing pages, so the mirror writes next-page links (absolute URLs) through nginx.
    hub = HubEmulator(list_page_size=2).start()
    prefix = f"lb-{uuid.uuid4().hex[:12]}"
    lb = LoadBalancer(work / "nginx", [])
    env = {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
        # Where clients reach the mirrors: written into the absolute URLs the mirror makes.
        "HUB_MIRROR_SERVER_PUBLIC_URL": lb.url,
        "HUB_MIRROR_SERVER_SHUTDOWN_GRACE": str(GRACE),
        "HUB_MIRROR_STORAGE_S3_PART_SIZE": str(MIN_PART_SIZE),
        "HUB_MIRROR_UPSTREAM_PROBE_INTERVAL": "0",
    }
    replicas = []
    for i in range(REPLICAS):
        args = [
            "--upstream", hub.url,
            "--cache-dir", str(work / f"replica-{i}"),
            "--storage", "s3",
            "--s3-endpoint", shared_s3.endpoint,
            "--s3-bucket", SHARED_BUCKET,
            "--s3-prefix", prefix,
        ]  # fmt: skip
        replicas.append(Replica(f"replica-{i}", args, env, work / f"replica-{i}.log"))
    lb.replicas = [f"127.0.0.1:{r.port}" for r in replicas]
    try:
        for r in replicas:
            r.start()
        for r in replicas:
            r.wait_ready()
        lb.start()
        yield Cluster(hub, shared_s3, prefix, replicas, lb)
    finally:
        for r in replicas:
            if r.alive:
                r.kill()
        lb.stop()
        hub.stop()
        if FIGURES:
            print("\n[load-balancer] figures: " + json.dumps(FIGURES, sort_keys=True))


# -- helpers -------------------------------------------------------------------------------------


def random_repo(hub: HubEmulator, repo_id: str, sizes_mib: list[float]) -> dict[str, bytes]:
    """A model repo: LFS weight shards of the given sizes plus small JSON files (not LFS)."""
    files = {f"model-{i:02d}.safetensors": os.urandom(int(size * MIB) + i) for i, size in enumerate(sizes_mib)}
    files["config.json"] = json.dumps({"model_type": "tiny", "repo": repo_id}).encode()
    files["tokenizer_config.json"] = json.dumps({"padding_side": "left", "n": 7}).encode()
    hub.add_repo("model", repo_id, files)
    return files


SNAPSHOT = """
out["path"] = snapshot_download({repo!r})
"""


def snapshot_clients(cluster: Cluster, repo_id: str, work: Path, count: int) -> list[Any]:
    """`count` huggingface_hub clients in subprocesses, each downloading the snapshot through nginx at once."""

    def one(i: int) -> Any:
        return run_client(cluster.url, SNAPSHOT.format(repo=repo_id), work / f"client-{i}", timeout=150)

    with ThreadPoolExecutor(count) as pool:
        futures = [pool.submit(one, i) for i in range(count)]
        return [f.result() for f in futures]


def check_snapshots(results: list[Any], files: dict[str, bytes]) -> None:
    want = {name: sha256_hex(data) for name, data in files.items()}
    for i, out in enumerate(results):
        root = Path(out["path"])
        got = {name: sha256_hex((root / name).read_bytes()) for name in files}
        assert got == want, f"client {i}: files differ from the repo's"


def cdn_gets(hub: HubEmulator) -> int:
    return hub.count(method="GET", origin="cdn")


def check_bucket(cluster: Cluster) -> int:
    """Hash every blob stored under the cluster's prefix against its key; the number of blobs checked."""
    client = cluster.s3.client()
    root = f"{cluster.prefix}/blobs/"
    checked = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=SHARED_BUCKET, Prefix=root):
        for item in page.get("Contents", []):
            algo, _, etag = item["Key"][len(root) :].split("/")
            data = client.get_object(Bucket=SHARED_BUCKET, Key=item["Key"])["Body"].read()
            digest = sha256_hex(data) if algo == "sha256" else git_blob_sha1(data)
            assert digest == etag, f"stored blob {item['Key']} holds other bytes ({len(data)} bytes, {algo} {digest})"
            checked += 1
    return checked


def nginx_summary(lines: list[str]) -> dict[str, int]:
    """Requests nginx answered, those it passed on to another replica, and its answers by status."""
    statuses = Counter(line.split()[2] for line in lines if len(line.split()) > 2)
    retried = sum(1 for line in lines if "upstream_status=" in line and "," in line.split("upstream_status=")[1])
    return {
        "requests": len(lines),
        "passed_to_next_replica": retried,
        **{f"status_{k}": v for k, v in statuses.items()},
    }


# -- scenarios -----------------------------------------------------------------------------------


def test_sixteen_clients_fetch_a_cold_repo_once_through_nginx(cluster: Cluster, tmp_path: Path) -> None:
    hub = cluster.hub
    files = random_repo(hub, "lb/cold", [1, 1.5, 2, 2.5, 3, 1, 2, 3])
    for i in range(3):  # for the listing pages below
        hub.add_repo("model", f"lb/extra-{i}", {"config.json": b"{}"})
    size = sum(len(data) for data in files.values())
    lfs = sum(1 for name in files if name.endswith(".safetensors"))
    hub.faults.throttle(2 * MIB)  # each upstream body at 2 MiB/s: the fills last 0.5-1.5 s and overlap
    before_cdn, before_bytes, log_from = cdn_gets(hub), cluster.upstream_bytes(), len(cluster.lb.access_log())
    started = time.monotonic()
    try:
        results = snapshot_clients(cluster, "lb/cold", tmp_path, CLIENTS)
    finally:
        hub.faults.clear()
    elapsed = time.monotonic() - started
    check_snapshots(results, files)
    cluster.settle()
    upstream = cluster.upstream_bytes() - before_bytes
    fetched = cdn_gets(hub) - before_cdn
    peer = [r.metric("hub_mirror_peer_fills_total", outcome="streamed") for r in cluster.replicas]
    nginx = nginx_summary(cluster.lb.access_log()[log_from:])
    report(
        "cold_snapshot",
        clients=CLIENTS,
        repo_files=len(files),
        repo_bytes=size,
        upstream_bytes=int(upstream),
        upstream_ratio=round(upstream / size, 4),
        cdn_gets=fetched,
        peer_streams=int(sum(peer)),
        seconds=round(elapsed, 1),
        nginx=nginx,
    )
    assert upstream <= 1.05 * size, f"{upstream} bytes fetched upstream for a {size}-byte repo"
    assert fetched == lfs, f"{fetched} CDN GETs for {lfs} LFS files"
    assert nginx.get("status_502", 0) + nginx.get("status_503", 0) + nginx.get("status_504", 0) == 0

    # Absolute URLs the mirror writes name nginx (server.public_url), and the client follows them.
    with urllib.request.urlopen(f"{cluster.url}/api/models?author=lb", timeout=30) as resp:
        link = resp.headers["Link"]
    assert link and link.startswith(f"<{cluster.url}/api/models?"), link
    out = run_client(
        cluster.url, 'out["ids"] = sorted(m.id for m in HfApi().list_models(author="lb"))', tmp_path / "ls"
    )
    assert out["ids"] == sorted(["lb/cold", "lb/extra-0", "lb/extra-1", "lb/extra-2"])


def test_a_replica_killed_mid_fill_costs_no_client_its_files(cluster: Cluster, tmp_path: Path) -> None:
    cluster.ensure_up()
    hub = cluster.hub
    files = random_repo(hub, "lb/killed", [2, 3, 2.5, 3, 2, 3, 2.5, 3])
    size = sum(len(data) for data in files.values())
    hub.faults.throttle(1 * MIB)  # fills last 2-3 s: the kill lands in the middle of them
    before_cdn, log_from = cdn_gets(hub), len(cluster.lb.access_log())
    cut_lines = {r.name: r.log_text().count(" CUT ") for r in cluster.replicas}
    with ThreadPoolExecutor(1) as pool:
        clients = pool.submit(snapshot_clients, cluster, "lb/killed", tmp_path, CLIENTS)
        # Kill the replica with the most fills in flight, once fills have run a while (mid-body).
        victim, first_seen, deadline = None, None, time.monotonic() + 60
        while victim is None:
            assert time.monotonic() < deadline and not clients.done(), "no fill was seen in flight"
            in_flight = {r.name: r.metric("hub_mirror_fills_in_flight") for r in cluster.replicas}
            if first_seen is None and sum(in_flight.values()) > 0:
                first_seen = time.monotonic()
            busiest = max(cluster.replicas, key=lambda r: in_flight[r.name])
            if first_seen is not None and time.monotonic() - first_seen > 0.5 and in_flight[busiest.name] > 0:
                victim = busiest
                victim.kill()
            else:
                time.sleep(0.05)
        assert victim is not None
        killed_at = time.monotonic()
        try:
            results = clients.result(timeout=170)
        except Exception as exc:
            raise AssertionError(f"a client failed after {victim.name} was killed: {exc}\n{cluster.logs()}") from exc
        finally:
            hub.faults.clear()
    elapsed = time.monotonic() - killed_at
    check_snapshots(results, files)
    cluster.settle()
    checked = check_bucket(cluster)
    survivors = [r for r in cluster.replicas if r is not victim]
    nginx = nginx_summary(cluster.lb.access_log()[log_from:])
    report(
        "replica_killed",
        clients=CLIENTS,
        client_failures=0,
        killed=victim.name,
        fills_in_flight_at_kill={k: int(v) for k, v in in_flight.items()},
        repo_bytes=size,
        cdn_gets=cdn_gets(hub) - before_cdn,
        takeovers=int(sum(r.metric("hub_mirror_peer_fills_total", outcome="unreachable") for r in survivors)),
        streams_cut_by_survivors=sum(r.log_text().count(" CUT ") - cut_lines[r.name] for r in survivors),
        seconds_after_kill=round(elapsed, 1),
        stored_blobs_hashed=checked,
        nginx=nginx,
    )
    assert checked >= len(files)


@dataclass
class Load:
    """What the clients saw during the rolling restart."""

    ok: int = 0
    failed: list[str] = field(default_factory=list)  # before any body byte: nginx should have retried these
    cut: list[str] = field(default_factory=list)  # body cut short by a restart, right so far
    cut_downloads: int = 0  # downloads whose first GET was cut
    resumed: int = 0  # of those, completed by Range retries
    wrong: list[str] = field(default_factory=list)  # a body with wrong bytes: never allowed
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: str, what: str = "") -> None:
        with self.lock:
            if kind == "ok":
                self.ok += 1
            elif kind in ("resumed", "cut_downloads"):
                setattr(self, kind, getattr(self, kind) + 1)
            else:
                getattr(self, kind).append(what)


def get(base: str, path: str, data: bytes, load: Load, *, rate: float | None = None) -> None:
    """GET `path` through nginx and sort the outcome into `load`; a cut body is resumed with Range,
    as clients do (again if the resume is cut too, at most three times)."""
    start, outcome = 0, get_once(base, path, data, load, 0, rate)
    if isinstance(outcome, int):
        load.add("cut_downloads")
    for _ in range(3):
        if not isinstance(outcome, int):
            break
        start, outcome = outcome, get_once(base, path, data, load, outcome, None)
    if start and outcome == "ok":
        load.add("resumed")


def get_once(base: str, path: str, data: bytes, load: Load, start: int, rate: float | None) -> str | int:
    """One GET from byte `start`: "ok", "failed", "wrong", or where the body was cut (recorded in `load`)."""
    port = int(base.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    received = b""
    try:
        headers = {"Range": f"bytes={start}-"} if start else {}
        try:
            conn.request("GET", path, headers=headers)
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            load.add("failed", f"{path} from {start}: {exc!r}")
            return "failed"
        if resp.status != (206 if start else 200):
            load.add("failed", f"{path} from {start}: {resp.status} {resp.read()[:200]!r}")
            return "failed"
        try:
            while True:
                chunk = resp.read(256 * 1024 if rate else 1024 * 1024)
                if not chunk:
                    break
                received += chunk
                if rate:
                    time.sleep(len(chunk) / rate)
            if len(received) != len(data) - start:
                raise http.client.IncompleteRead(received)
        except (OSError, http.client.HTTPException) as exc:
            if received != data[start : start + len(received)]:
                load.add("wrong", f"{path}: {len(received)} bytes from {start}, cut, differ ({exc!r})")
                return "wrong"
            load.add("cut", f"{path}: {len(received)} of {len(data) - start} bytes from {start} ({exc!r})")
            return start + len(received)
        if received != data[start:]:
            load.add("wrong", f"{path}: a whole body from {start} with other bytes")
            return "wrong"
        load.add("ok")
        return "ok"
    finally:
        conn.close()


def test_rolling_restart_under_load(cluster: Cluster, tmp_path: Path) -> None:
    cluster.ensure_up()
    hub = cluster.hub
    repo = "lb/rolling"
    cached = {f"warm-{i:02d}.bin": os.urandom(300_000 + 50_000 * i) for i in range(8)}
    fresh = {f"cold-{i:02d}.bin": os.urandom(400_000 + 20_000 * i) for i in range(60)}
    # One large file read slowly: it is still streaming when its replica's grace ends.
    large = {"large.bin": os.urandom(48 * MIB)}
    files = {**cached, **fresh, **large}
    hub.add_repo("model", repo, files, lfs=list(files))
    base = f"/{repo}/resolve/main/"
    for name in [*cached, *large]:  # warm, before the load starts
        with urllib.request.urlopen(cluster.url + base + name, timeout=60) as resp:
            assert resp.read() == files[name]
    cluster.settle()
    hub.faults.throttle(1 * MIB, path_contains="cold-")  # uncached files: fills of about 0.5 s

    load, stop = Load(), threading.Event()
    queue = list(fresh)
    queue_lock = threading.Lock()
    rng = random.Random(13)

    def worker(n: int) -> None:
        i = 0
        while not stop.is_set() and i < 2000:  # bounded, in case the restarts hang
            i += 1
            name = None
            if i % 3 == n % 3:
                with queue_lock:
                    name = queue.pop(0) if queue else None
            if name is None:
                name = rng.choice(list(cached) + [f for f in fresh if f not in queue])
            get(cluster.url, base + name, files[name], load)

    def slow_reader() -> None:
        get(cluster.url, base + "large.bin", large["large.bin"], load, rate=6 * MIB)

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(6)]
    log_from = len(cluster.lb.access_log())
    started = time.monotonic()
    for t in threads:
        t.start()
    restarts = []
    slow: list[threading.Thread] = []
    try:
        time.sleep(1.0)
        for replica in cluster.replicas:
            # Slow readers of the large file on every replica, so the restart finds one mid-stream.
            for _ in range(REPLICAS):
                reader = threading.Thread(target=slow_reader, daemon=True)
                reader.start()
                slow.append(reader)
            time.sleep(0.5)
            code, took = replica.terminate()
            ready = replica.start().wait_ready()
            restarts.append(
                {"replica": replica.name, "exit": code, "exit_s": round(took, 2), "ready_s": round(ready, 2)}
            )
            time.sleep(cluster.lb.fail_timeout + 0.5)  # nginx sends it traffic again
        time.sleep(1.0)
    finally:
        stop.set()
        for t in [*threads, *slow]:
            t.join(90)
        hub.faults.clear()
    elapsed = time.monotonic() - started
    nginx = nginx_summary(cluster.lb.access_log()[log_from:])
    report(
        "rolling_restart",
        requests=load.ok + len(load.failed) + len(load.cut) + len(load.wrong),
        ok=load.ok,
        failed_before_body=len(load.failed),
        cut_mid_stream=len(load.cut),
        downloads_cut=load.cut_downloads,
        cut_then_resumed=load.resumed,
        wrong_bodies=len(load.wrong),
        restarts=restarts,
        seconds=round(elapsed, 1),
        nginx=nginx,
    )
    assert not [t for t in [*threads, *slow] if t.is_alive()], "a client thread hung"
    assert not load.wrong, load.wrong
    assert not load.failed, f"{load.failed}\n{cluster.logs()}"
    # Every cut download was completed by its retries (a retry may be cut once more by the next restart).
    assert load.resumed == load.cut_downloads, load.cut
    assert all(r["exit"] == 0 and r["exit_s"] < GRACE + 10 for r in restarts), restarts
    assert load.ok > 100
