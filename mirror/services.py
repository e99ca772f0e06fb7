"""The objects one running mirror is made of, held on the app (no global state)."""

from __future__ import annotations

from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from mirror.cache.blobs.blobs import Blobs
from mirror.cache.blobs.fill import Filler
from mirror.cache.blobs.leases import FillLeases
from mirror.cache.blobs.peers import Peers
from mirror.cache.blobs.poison import PoisonLedger
from mirror.cache.metadata.entries import Entries
from mirror.cache.metadata.listings import Metadata
from mirror.cache.metadata.revisions import Revisions
from mirror.cache.records import Records
from mirror.cache.responses import ResponseCache
from mirror.config import Config
from mirror.metrics import Metrics
from mirror.policy import AccessPolicy, Policy
from mirror.policy.allowlist import AllowList
from mirror.storage import Storage
from mirror.sync.pins import Pins
from mirror.upstream import Upstream


@dataclass
class Services:
    config: Config
    storage: Storage
    upstream: Upstream
    records: Records
    policy: Policy
    revisions: Revisions
    entries: Entries
    filler: Filler
    blobs: Blobs
    metadata: Metadata
    metrics: Metrics
    allowlist: AllowList
    pins: Pins
    responses: ResponseCache = field(default_factory=ResponseCache)
    # (reachable, when) of the last upstream probe made for /readyz.
    upstream_probe: tuple[bool, float] | None = None

    @classmethod
    def build(
        cls, config: Config, storage: Storage, upstream: Upstream, peer_session: aiohttp.ClientSession | None = None
    ) -> Services:
        """`peer_session` (given when server.advertise_url is set) enables fill leases across replicas."""
        metrics = upstream.metrics or Metrics()
        records = Records(storage, metrics=metrics)
        stale_wait = config.cache.stale_wait
        access = AccessPolicy(upstream, records, config.cache.access_ttl, stale_wait=stale_wait)
        revisions = Revisions(upstream, records, config.cache.revision_ttl, stale_wait=stale_wait)
        revisions.observers.append(access.observe)
        allowlist = AllowList(
            records,
            enforce=config.policy.enforce_allowlist,
            on_deny=lambda repo: metrics.allowlist_denials.labels(repo.repo_type).inc(),
        )
        pins = Pins(records, allowlist)
        revisions.pins = pins
        leases = peers = None
        if peer_session is not None:
            leases = FillLeases(storage, config.server.advertise_url, config.cache.fill_lease_ttl)
            peers = Peers(peer_session, metrics)
        filler = Filler(storage, upstream, config.cache, config.upstream, metrics, leases, PoisonLedger(storage))
        metrics.track_fills(lambda: filler.in_flight)
        return cls(
            config=config,
            storage=storage,
            upstream=upstream,
            records=records,
            policy=Policy(allowlist, access),
            revisions=revisions,
            entries=Entries(upstream, records),
            filler=filler,
            blobs=Blobs(storage, filler, peers),
            metadata=Metadata(upstream, records, revisions, config.cache.refs_ttl, stale_wait=stale_wait),
            metrics=metrics,
            allowlist=allowlist,
            pins=pins,
        )


SERVICES = web.AppKey("services", Services)
