"""Scenario 10 (issue 14): hf_xet through the mirror as its CAS, against plain HTTP and the upstream's CAS.

One run each of: the real hf_xet client straight from the emulator's Xet CAS (the reference), hf_xet
through the mirror with `hub.xet: serve` (cold: the mirror fills from the upstream's CAS; warm: a
second client, fresh client cache), and huggingface_hub over plain HTTP through the mirror (`strip`,
cold and warm). Then the upstream bytes of a Xet fill of a revision that changes 5 % of the file's
bytes, against the file's size (target: at most 0.1 x).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.common import MB, Row, Target, median
from bench.scenarios import Ctx, mirror
from testbed.hubemu.repos import Repo

XET_REPO = "bench/xet"
XET_FILE = "w.safetensors"

_DOWNLOAD = """
import hashlib, sys, time
from pathlib import Path
from huggingface_hub import hf_hub_download
start = time.perf_counter()
path = hf_hub_download(sys.argv[1], sys.argv[2], revision=sys.argv[3])
took = time.perf_counter() - start
print(took, hashlib.sha256(Path(path).read_bytes()).hexdigest())
"""


def download_seconds(endpoint: str, home: Path, revision: str, *, xet: bool) -> tuple[float, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(home), HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
    if not xet:
        env["HF_HUB_DISABLE_XET"] = "1"
    try:
        out = subprocess.run(
            [sys.executable, "-c", _DOWNLOAD, XET_REPO, XET_FILE, revision],
            env=env,
            capture_output=True,
            text=True,
            timeout=1800,
        )
    finally:
        shutil.rmtree(home, ignore_errors=True)
    if out.returncode != 0:
        raise RuntimeError(f"hf_hub_download via {endpoint} failed: {out.stderr.strip().splitlines()[-1:]}")
    took, digest = out.stdout.split()[-2:]
    return float(took), digest


def xet_paths(ctx: Ctx) -> None:
    s, res, hub = ctx.settings, ctx.results, ctx.hub
    data = ctx.data
    repo = hub.add_repo("model", XET_REPO, {XET_FILE: data}, lfs=[XET_FILE])
    commit = repo.head()
    started = time.perf_counter()
    layout = repo.commits[commit].files[XET_FILE].xet  # chunk and hash once, outside every timing
    assert layout is not None
    took = time.perf_counter() - started
    res.notes.append(f"scenario 10: the emulator chunked and hashed {len(data) / MB:.0f} MB in {took:.1f} s")
    expected = hashlib.sha256(data).hexdigest()
    serve_env = {"HUB_MIRROR_UPSTREAM_XET": "true", "HUB_MIRROR_HUB_XET": "serve"}
    names = ("hf_xet direct", "hf_xet mirror cold", "hf_xet mirror warm", "http mirror cold", "http mirror warm")
    times: dict[str, list[float]] = {k: [] for k in names}
    home = ctx.root / "xet-home"

    def timed(name: str, endpoint: str, xet: bool) -> None:
        took, digest = download_seconds(endpoint, home, commit, xet=xet)
        if digest != expected:
            raise RuntimeError(f"{name}: wrong bytes")
        times[name].append(took)

    for run in range(s.runs):
        timed("hf_xet direct", hub.url, True)
        cache = ctx.root / f"xet-serve-{run}"
        with mirror(ctx, cache, env=serve_env) as m:
            timed("hf_xet mirror cold", m.url, True)
            m.settle()
            timed("hf_xet mirror warm", m.url, True)
        shutil.rmtree(cache, ignore_errors=True)
        cache = ctx.root / f"xet-http-{run}"
        with mirror(ctx, cache) as m:
            timed("http mirror cold", m.url, False)
            m.settle()
            timed("http mirror warm", m.url, False)
        shutil.rmtree(cache, ignore_errors=True)
    mb = len(data) / MB
    direct = mb / median(times["hf_xet direct"])
    for name, values in times.items():
        rate = mb / median(values)
        ref = "hf_xet direct" if name != "hf_xet direct" else ""
        res.add(Row("10 xet", f"{name} ({mb:.0f} MB)", rate, "MB/s", ref, rate / direct if ref else None, len(values)))
    for kind in ("cold", "warm"):
        res.add(
            Row(
                "10 xet",
                f"{kind}: hf_xet via mirror / HTTP via mirror",
                median(times[f"http mirror {kind}"]) / median(times[f"hf_xet mirror {kind}"]),
                "x",
            )
        )
    _dedup(ctx, repo, data)


def _dedup(ctx: Ctx, repo: Repo, data: bytes) -> None:
    """Upstream bytes of a Xet fill of a revision that changes 5 % of the file (in 5 places)."""
    res = ctx.results
    size = len(data)
    edited = bytearray(data)
    piece = size // 100
    for i in range(5):
        at = (2 * i + 1) * size // 10
        edited[at : at + piece] = os.urandom(piece)
    cache = ctx.root / "xet-dedup"
    with mirror(ctx, cache, env={"HUB_MIRROR_UPSTREAM_XET": "true"}) as m:
        download_seconds(m.url, ctx.root / "dedup-home", repo.head(), xet=False)
        m.settle()
        before = m.metric("hub_mirror_upstream_bytes_total")
        sha = repo.commit({XET_FILE: bytes(edited)}, message="5 % changed")
        repo.commits[sha].files[XET_FILE].xet  # noqa: B018 (chunked before the timing, as the Hub would have)
        download_seconds(m.url, ctx.root / "dedup-home", sha, xet=False)
        fetched = m.metric("hub_mirror_upstream_bytes_total") - before
    shutil.rmtree(cache, ignore_errors=True)
    share = fetched / size
    subject = "upstream bytes / file, revision with 5 % changed"
    res.add(Row("10 xet", subject, share, "x", note=f"{fetched / MB:.1f} MB"))
    res.targets.append(Target("upstream bytes for a 5 %-changed revision <= 0.1 x the file (issue 14)",
                              f"{share:.3f} x", share <= 0.1))  # fmt: skip
