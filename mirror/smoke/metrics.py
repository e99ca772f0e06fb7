"""Prometheus metrics for `hub-mirror smoke --every`: the last run's result, per repo.

The worker loop is its own process, so it owns its own registry (no global one) and serves it with
prometheus_client's HTTP server on --metrics-port. Every smoke metric is defined here.
"""

from __future__ import annotations

import math
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge

from mirror.smoke.result import SmokeResult

NAN = math.nan


class SmokeMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        def gauge(name: str, doc: str, labels: tuple[str, ...] = ("repo",)) -> Gauge:
            return Gauge(f"hub_mirror_smoke_{name}", doc, labels, registry=registry)

        self.runs = Counter("hub_mirror_smoke_runs", "Smoke runs by result", ("repo", "result"), registry=registry)
        self.passed = gauge("passed", "1 if the last smoke run passed, 0 if it failed")
        self.last_run = gauge("last_run_timestamp_seconds", "Unix time the last smoke run started")
        self.duration = gauge("duration_seconds", "Wall time of the last smoke run")
        self.files = gauge("files_verified", "Files whose hash matched the mirror's listing in the last run")
        self.bytes = gauge("download_bytes", "Bytes in the repo at the checked commit")
        self.download = gauge("download_seconds", "Time to download the repo through the mirror (NaN if not reached)")
        self.throughput = gauge("download_bytes_per_second", "Download throughput through the mirror")
        self.load = gauge("load_seconds", "Time to load processor and model (NaN if not reached)")
        self.ttft = gauge("time_to_first_token_seconds", "Time to the first generated token, prefill included")
        self.tps = gauge("tokens_per_second", "Decode speed after the first token")
        self.gpu = gauge("peak_gpu_memory_bytes", "Peak GPU memory allocated by torch (NaN on the CPU)")
        # Labels carry the strings an alert should show: which commit, and where and why it failed.
        self.info = gauge("last_result_info", "Always 1; labels describe the last run", ("repo", "commit", "stage"))

    def observe(self, result: SmokeResult) -> None:
        repo = result.repo
        self.runs.labels(repo, "pass" if result.passed else "fail").inc()
        self.passed.labels(repo).set(1 if result.passed else 0)
        started = datetime.fromisoformat(result.started_at).timestamp() if result.started_at else NAN
        self.last_run.labels(repo).set(started)
        self.duration.labels(repo).set(_num(result.duration_s))
        self.files.labels(repo).set(result.files_verified)
        self.bytes.labels(repo).set(result.bytes)
        self.download.labels(repo).set(_num(result.download_s))
        mbps = result.download_mb_per_s
        self.throughput.labels(repo).set(NAN if mbps is None else mbps * 1_000_000)
        self.load.labels(repo).set(_num(result.load_s))
        self.ttft.labels(repo).set(_num(result.time_to_first_token_s))
        self.tps.labels(repo).set(_num(result.tokens_per_s))
        self.gpu.labels(repo).set(_num(result.peak_gpu_memory_bytes))
        self.info.clear()  # one series only: the last run's labels
        self.info.labels(repo, result.commit or "", result.stage).set(1)


def _num(value: float | None) -> float:
    return NAN if value is None else float(value)
