"""Every metric the mirror exports, registered in one place (its own registry, no global state).

Labels are low-cardinality by construction: route kinds, status classes, repo types, cache
results, outcomes. Never a repo id or a path, so series stay flat whatever clients ask for.
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from mirror import __version__

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
FILL_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


def status_class(status: int) -> str:
    return f"{status // 100}xx"


@dataclass
class RequestStats:
    """What one client request caused, collected while it runs (for logs and cache metrics)."""

    upstream_calls: int = 0
    upstream_seconds: float = 0.0
    coalesced: bool = False  # joined an upstream call already in flight (metadata)
    joined_fill: bool = False  # joined a blob fill already in flight
    cache: str | None = None  # set explicitly by handlers that know better (blob hits/misses)
    bytes_sent: int = 0
    cut: bool = False  # the body broke off after the headers (the status says what they promised)
    # When the request stops waiting for refreshes of answers it has (cache.stale_wait after its
    # first such wait), however many it meets: visibility, access decision, branch.
    stale_deadline: float | None = None

    def cache_result(self) -> str:
        if self.cache:
            return self.cache
        if self.coalesced:
            return "coalesced"
        return "miss" if self.upstream_calls else "hit"


CURRENT_REQUEST: contextvars.ContextVar[RequestStats | None] = contextvars.ContextVar("request_stats", default=None)


def current_stats() -> RequestStats | None:
    return CURRENT_REQUEST.get()


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.build_info = Info("hub_mirror_build", "hub-mirror build information", registry=r)
        self.build_info.info({"version": __version__})
        self.requests = Counter(
            "hub_mirror_requests_total",
            "Client requests by route kind and status class",
            ["route", "method", "status"],
            registry=r,
        )
        self.request_duration = Histogram(
            "hub_mirror_request_duration_seconds",
            "Time to answer a client request (whole body sent)",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.cache_lookups = Counter(
            "hub_mirror_cache_lookups_total",
            "Cache lookups by kind (blob, metadata) and result (hit, miss, coalesced)",
            ["kind", "result"],
            registry=r,
        )
        self.bytes_served = Counter(
            "hub_mirror_bytes_served_total",
            "File bytes sent to clients by source (cache, fill)",
            ["source"],
            registry=r,
        )
        self.redirects = Counter(
            "hub_mirror_object_store_redirects_total",
            "GETs of cached files answered with a 302 to a presigned object-store URL",
            registry=r,
        )
        self.peer_fills = Counter(
            "hub_mirror_peer_fills_total",
            "Misses that another replica was filling: streamed from it, or filled here when it was unreachable",
            ["outcome"],
            registry=r,
        )
        self.upstream_requests = Counter(
            "hub_mirror_upstream_requests_total",
            "Requests to upstream by kind (api, head, body) and status class",
            ["kind", "status"],
            registry=r,
        )
        self.upstream_bytes = Counter(
            "hub_mirror_upstream_bytes_total", "File bytes received from upstream by fills", registry=r
        )
        self.fill_duration = Histogram(
            "hub_mirror_fill_duration_seconds",
            "Duration of blob fills by outcome (ok, integrity, error)",
            ["outcome"],
            buckets=FILL_BUCKETS,
            registry=r,
        )
        self.client_disconnects = Counter(
            "hub_mirror_client_disconnects_total",
            "File downloads the client closed before the end (normal for segmented and cancelled downloads)",
            registry=r,
        )
        self.xet_xorb_checks = Counter(
            "hub_mirror_xet_xorb_checks_total",
            "Xorb ranges a Xet fill fetched, by whether their bytes could be verified on their own against the"
            " xorb's hash (verified) or wait for the file's sha256 (unverified: part of a xorb, or not matching)",
            ["result"],
            registry=r,
        )
        self.xet_bytes = Counter(
            "hub_mirror_xet_fill_bytes_total",
            "Bytes of files filled from the upstream's Xet CAS, by where they came from: decoded from xorb ranges"
            " fetched upstream, or read from cached files holding the same chunks (upstream bytes saved)",
            ["source"],
            registry=r,
        )
        self.catch_up_bytes = Counter(
            "hub_mirror_fill_catch_up_bytes_total",
            "Bytes fetched from upstream a second time for followers too far behind an S3 fill",
            registry=r,
        )
        self.fill_resumes = Counter(
            "hub_mirror_fill_resumes_total", "Upstream transfers resumed with Range after a drop", registry=r
        )
        self.hash_mismatches = Counter(
            "hub_mirror_hash_mismatches_total",
            "Fills discarded because bytes did not match their hash or size",
            registry=r,
        )
        self.fills_in_flight = Gauge("hub_mirror_fills_in_flight", "Blob fills in progress", registry=r)
        self.storage_bytes = Gauge(
            "hub_mirror_storage_bytes", "Bytes of published blobs in storage", ["backend"], registry=r
        )
        self.storage_blobs = Gauge("hub_mirror_storage_blobs", "Published blobs in storage", ["backend"], registry=r)
        self.storage_scan_timestamp = Gauge(
            "hub_mirror_storage_scan_timestamp_seconds", "When storage usage was last measured", registry=r
        )
        self.ready = Gauge(
            "hub_mirror_ready",
            "1 while storage is reachable and writable, as /readyz decides (checked every 15 s and by each /readyz)",
            registry=r,
        )
        self.upstream_up = Gauge(
            "hub_mirror_upstream_up",
            "1 while upstream answers: the circuit breaker is closed (set by every upstream request)",
            registry=r,
        )
        self.breaker_opens = Counter(
            "hub_mirror_upstream_breaker_opens_total",
            "Times the upstream circuit breaker opened (upstream requests then fail at once for a cooldown)",
            registry=r,
        )
        self.metadata_write_failures = Counter(
            "hub_mirror_metadata_write_failures_total",
            "Metadata records that could not be stored (the answer was served and kept in memory)",
            registry=r,
        )

        self.allowlist_denials = Counter(
            "hub_mirror_allowlist_denials_total",
            "Requests refused because the repo is not on the allow-list",
            ["repo_type"],
            registry=r,
        )
        self.sync_runs = Counter(
            "hub_mirror_sync_runs_total", "Sync jobs finished, by outcome (succeeded, failed)", ["outcome"], registry=r
        )
        self.sync_last_success = Gauge(
            "hub_mirror_sync_last_success_timestamp_seconds",
            "When each allow-list entry last synced completely (label: entry id; bounded by the allow-list)",
            ["entry"],
            registry=r,
        )
        self.sync_bytes = Counter(
            "hub_mirror_sync_bytes_total", "Bytes downloaded into the cache by sync jobs", registry=r
        )
        self.scheduler_leader = Gauge(
            "hub_mirror_sync_scheduler_leader", "1 while this replica holds the scheduler lease", registry=r
        )

        # Cache lifecycle (mirror/lifecycle/): eviction, gc, scrub.
        self.maintenance_leader = Gauge(
            "hub_mirror_maintenance_leader",
            "1 while this replica holds the maintenance lease (runs eviction, gc and the scrub for all)",
            registry=r,
        )
        self.cache_limit_bytes = Gauge(
            "hub_mirror_cache_limit_bytes", "cache.max_bytes: the limit eviction keeps blobs under (0: none)",
            registry=r,
        )  # fmt: skip
        self.pinned_bytes = Gauge(
            "hub_mirror_pinned_bytes",
            "Bytes of blobs reachable from pinned revisions of allow-listed repos (never evicted)",
            registry=r,
        )
        self.pinned_over_limit = Gauge(
            "hub_mirror_pinned_over_limit",
            "1 when pinned blobs alone exceed cache.max_bytes (they are kept; raise the limit or the disk)",
            registry=r,
        )
        self.evicted_blobs = Counter(
            "hub_mirror_evicted_blobs_total", "Blobs removed to keep the cache under cache.max_bytes", registry=r
        )
        self.evicted_bytes = Counter(
            "hub_mirror_evicted_bytes_total", "Bytes removed to keep the cache under cache.max_bytes", registry=r
        )
        self.eviction_runs = Counter(
            "hub_mirror_eviction_runs_total", "Eviction passes by outcome (ok, under_limit, error)", ["outcome"],
            registry=r,
        )  # fmt: skip
        self.gc_removed = Counter(
            "hub_mirror_gc_removed_total",
            "Objects garbage collection removed, by kind (blob, staging, lease, purge, access, xet_record)",
            ["kind"],
            registry=r,
        )
        self.gc_removed_bytes = Counter(
            "hub_mirror_gc_removed_bytes_total", "Bytes of unreferenced blobs garbage collection removed", registry=r
        )
        self.gc_last_success = Gauge(
            "hub_mirror_gc_last_success_timestamp_seconds", "When garbage collection last completed", registry=r
        )
        self.scrub_bytes = Counter(
            "hub_mirror_scrub_bytes_total", "Stored blob bytes re-hashed by the scrub", registry=r
        )
        self.scrub_blobs = Counter(
            "hub_mirror_scrub_blobs_total",
            "Stored blobs the scrub re-checked, by outcome (ok, corrupt, missing, error: could not be read)",
            ["outcome"],
            registry=r,
        )
        self.quarantined_blobs = Counter(
            "hub_mirror_quarantined_blobs_total",
            "Stored blobs whose bytes no longer matched their hash: removed, recorded, refilled on demand",
            registry=r,
        )
        self.scrub_last_pass = Gauge(
            "hub_mirror_scrub_last_pass_timestamp_seconds", "When the background scrub last finished a pass", registry=r
        )

    def track_fills(self, count: Callable[[], int]) -> None:
        self.fills_in_flight.set_function(count)


class LogLimit:
    """Warnings about a failure that may repeat on every request: the first, then one per window.

    Each line after the first says how many were left out since the one before, so a full disk or a
    dead upstream costs a line a minute, not one per request.
    """

    def __init__(self, logger: logging.Logger, window: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.logger = logger
        self.window = window
        self.clock = clock
        self._last: dict[Hashable, tuple[float, int]] = {}  # key -> (when logged, left out since)

    def warning(self, key: Hashable, message: str, *args: Any) -> None:
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last[0] < self.window:
            self._last[key] = (last[0], last[1] + 1)
            return
        if last is not None and last[1]:
            message += " (and %d more like it in the last %.0f s)"
            args = (*args, last[1], now - last[0])
        self._last[key] = (now, 0)
        self.logger.warning(message, *args, stacklevel=2)


def observe_upstream(metrics: Metrics | None, kind: str, status: int | None, started: float) -> None:
    """Record one upstream request, for the metrics and for the client request that caused it."""
    elapsed = time.monotonic() - started
    if metrics is not None:
        metrics.upstream_requests.labels(kind, status_class(status) if status else "error").inc()
    stats = CURRENT_REQUEST.get()
    if stats is not None:
        stats.upstream_calls += 1
        stats.upstream_seconds += elapsed
