"""App factory: the one place where the parts of a mirror are built and wired together.

Every part gets what it uses as constructor arguments, in the order the request path needs them
(storage and upstream, records, policy, metadata, blobs, sync), and is stored under its typed key
(appkeys.py) for the handlers that use it. Parts with a lifetime start and stop in `_lifetime`.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

from aiohttp import web
from cachetools import TTLCache

from mirror.admin.routes import add_admin_routes
from mirror.cache.blobs.access import AccessLog
from mirror.cache.blobs.blobs import Blobs
from mirror.cache.blobs.fill import Filler
from mirror.cache.blobs.poison import PoisonLedger
from mirror.cache.blobs.xetfill import XetSource
from mirror.cache.leases import Leases
from mirror.cache.metadata.entries import Entries
from mirror.cache.metadata.lfs import LfsObjects
from mirror.cache.metadata.listings import Metadata
from mirror.cache.metadata.revisions import Revisions
from mirror.cache.purge import Purge
from mirror.cache.records import Records
from mirror.cache.responses import ResponseCache
from mirror.cache.xetsecret import XetSecret
from mirror.config import Config
from mirror.hub.appkeys import (
    ACCESS,
    ALLOWLIST,
    BLOBS,
    CONFIG,
    DRAIN,
    ENTRIES,
    FILLER,
    LFS,
    LISTINGS,
    MAINTENANCE,
    METRICS,
    POLICY,
    PURGE,
    RECORDS,
    REPLICAS,
    RESPONSES,
    REVISIONS,
    SCHEDULER,
    STORAGE,
    STORAGE_OVERRIDE,
    SYNC,
    UPSTREAM,
    XET_SECRET,
    XET_TOKENS,
)
from mirror.hub.drain import Drain
from mirror.hub.errors import hub_errors
from mirror.hub.health import add_health_routes, measure_storage, probe_upstream
from mirror.hub.observe import observe
from mirror.hub.routes import add_routes
from mirror.hub.xetserve import TOKEN_TTL as XET_TOKEN_TTL
from mirror.lifecycle.evict import Evictor
from mirror.lifecycle.gc import GarbageCollector
from mirror.lifecycle.inventory import repo_blobs
from mirror.lifecycle.maintenance import Maintenance
from mirror.lifecycle.scrub import Scrubber
from mirror.metrics import Metrics
from mirror.policy import AccessPolicy, AllowList, Policy
from mirror.replicas import Replicas
from mirror.storage import Storage
from mirror.storage.configured import build_storage
from mirror.sync.jobs import SyncManager
from mirror.sync.pins import Pins
from mirror.sync.scheduler import Scheduler
from mirror.tasks import stop
from mirror.upstream import Upstream
from mirror.xetcas import XetCas


async def _lifetime(app: web.Application) -> AsyncIterator[None]:
    """Build the parts (HTTP sessions need the running loop), start them, and stop them in order."""
    config = app[CONFIG]
    metrics = app[METRICS]
    storage = app[STORAGE_OVERRIDE] if STORAGE_OVERRIDE in app else build_storage(config)
    await storage.start()
    session = Upstream.new_session(config.upstream)
    upstream = Upstream(config.upstream, session, metrics)
    cache = config.cache
    records = Records(storage, metrics=metrics)
    allowlist = AllowList(
        records,
        enforce=config.policy.enforce_allowlist,
        on_deny=lambda repo: metrics.allowlist_denials.labels(repo.repo_type).inc(),
    )
    access = AccessPolicy(upstream, records, cache.access_ttl, stale_wait=cache.stale_wait)
    pins = Pins(records, allowlist)
    revisions = Revisions(
        upstream, records, cache.revision_ttl, stale_wait=cache.stale_wait, pins=pins, observers=[access.observe]
    )
    entries = Entries(upstream, records)
    lfs = LfsObjects(upstream, records, scan=lambda repo: repo_blobs(storage, repo))
    listings = Metadata(upstream, records, revisions, cache.refs_ttl, stale_wait=cache.stale_wait)
    # Replicas that advertise themselves share fills through leases in storage (one upstream fetch).
    leases = replicas = replica_session = None
    if config.server.advertise_url:
        replica_session = Replicas.new_session(config.upstream.connect_timeout, config.upstream.read_timeout)
        leases = Leases(storage, config.server.advertise_url, cache.fill_lease_ttl)
        replicas = Replicas(replica_session, metrics)
    xet = None
    if config.upstream.xet:
        xet = XetSource(XetCas(upstream), storage, records, config.upstream.resume_attempts, metrics)
    filler = Filler(storage, upstream, cache, config.upstream, metrics, leases, PoisonLedger(storage), xet)
    metrics.track_fills(lambda: filler.in_flight)
    reads = AccessLog(storage, cache.access_flush_interval)
    blobs = Blobs(storage, filler, replicas, reads)
    policy = Policy(allowlist, access)
    responses = ResponseCache()
    purge = Purge(storage, records)
    for cache_of_repos in (responses, entries, lfs, revisions, listings, policy, pins):
        purge.register(cache_of_repos.forget)
    sync = SyncManager(
        config.sync,
        upstream_token=config.upstream.token,
        records=records,
        storage=storage,
        upstream=upstream,
        revisions=revisions,
        listings=listings,
        entries=entries,
        blobs=blobs,
        filler=filler,
        metrics=metrics,
        allowlist=allowlist,
        pins=pins,
    )
    scheduler = Scheduler(sync, allowlist, records, Leases(storage, "", config.sync.lease_ttl), config.sync, metrics)
    maintenance = Maintenance(
        # The lease outlives a few ticks, so one slow pass does not hand it over.
        Leases(storage, "", max(3 * cache.evict_interval, 30.0)),
        cache,
        evictor=Evictor(storage, reads, allowlist, cache, metrics) if cache.max_bytes else None,
        gc=GarbageCollector(storage, reads, cache.gc_grace, cache.evict_min_idle, metrics),
        scrub=Scrubber(
            storage,
            metrics,
            rate=cache.scrub_rate,
            # A corrupt blob goes even while read (those bytes are wrong anyway); new readers wait.
            remove=lambda key: reads.remove(key, force=True),
            source=f"scrub on {config.server.advertise_url or socket.gethostname()}",
            step_timeout=cache.storage_timeout,
        )
        if cache.scrub_rate
        else None,
        metrics=metrics,
    )
    app[STORAGE], app[UPSTREAM], app[RECORDS] = storage, upstream, records
    app[POLICY], app[ALLOWLIST] = policy, allowlist
    app[REVISIONS], app[ENTRIES], app[LISTINGS], app[LFS] = revisions, entries, listings, lfs
    app[BLOBS], app[FILLER], app[RESPONSES], app[PURGE] = blobs, filler, responses, purge
    if replicas is not None:
        app[REPLICAS] = replicas
    app[SYNC], app[SCHEDULER] = sync, scheduler
    app[ACCESS], app[MAINTENANCE] = reads, maintenance
    app[XET_SECRET] = XetSecret(records, config.hub.xet_secret)
    app[XET_TOKENS] = TTLCache(maxsize=10_000, ttl=XET_TOKEN_TTL)

    measurer = asyncio.create_task(measure_storage(storage, metrics), name="measure-storage")
    prober = None
    if config.upstream.probe_interval > 0:
        prober = asyncio.create_task(probe_upstream(upstream, config.upstream.probe_interval), name="probe-upstream")
    sync.start()
    if config.sync.enabled:
        scheduler.start()
    reads.start()
    maintenance.start()
    try:
        yield
    finally:
        await stop(measurer, prober)
        await maintenance.close()
        await scheduler.close()
        await sync.close()
        # Verified blobs being published may finish within the shutdown grace; the rest is cut.
        await filler.close(app[DRAIN].remaining())
        await app[DRAIN].close()
        await reads.close()  # after the last reads ended: their times are kept
        # Background revalidations use the upstream session: end them before it closes.
        await revisions.close()
        await listings.close()
        await policy.close()
        await session.close()
        if replica_session is not None:
            await replica_session.close()
        await storage.close()


def create_app(config: Config, storage: Storage | None = None) -> web.Application:
    """The mirror's app; `storage` replaces the configured backend (tests wrap one to inject faults)."""
    drain = Drain(config.server.shutdown_grace)
    # observe is outermost so it sees the status hub_errors produced.
    # Bodies as they came on the wire: git's gzipped requests go upstream as sent; hub/bodies.py
    # decodes (with a bound) the ones the mirror reads itself.
    app = web.Application(
        middlewares=[drain.track, observe, hub_errors],
        client_max_size=16 * 1024 * 1024,
        handler_args={"auto_decompress": False},
    )
    app[CONFIG] = config
    app[METRICS] = Metrics()
    app[DRAIN] = drain
    app.on_shutdown.append(drain.begin)
    if storage is not None:
        app[STORAGE_OVERRIDE] = storage
    app.cleanup_ctx.append(_lifetime)
    add_health_routes(app)
    add_admin_routes(app)
    add_routes(app)  # the catch-all Hub routes come last
    return app
