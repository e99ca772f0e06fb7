"""The typed keys the app holds each part of a running mirror under.

app.py (the wiring) builds every part with explicit constructor arguments and stores each under its
key; a handler reads only the keys of the parts it uses, so its dependencies are visible at a
glance and no module reaches into a bag of everything. Nothing here imports app.py or hub/.
"""

from __future__ import annotations

from aiohttp import web
from cachetools import TTLCache

from mirror.cache.blobs.access import AccessLog
from mirror.cache.blobs.blobs import Blobs
from mirror.cache.blobs.fill import Filler
from mirror.cache.metadata.entries import Entries
from mirror.cache.metadata.lfs import LfsObjects
from mirror.cache.metadata.listings import Metadata
from mirror.cache.metadata.revisions import Revisions
from mirror.cache.purge import Purge
from mirror.cache.records import Records
from mirror.cache.responses import ResponseCache
from mirror.cache.xetsecret import XetSecret
from mirror.config import Config
from mirror.hub.drain import Drain
from mirror.lifecycle.maintenance import Maintenance
from mirror.metrics import Metrics
from mirror.policy import AllowList, Policy
from mirror.replicas import Replicas
from mirror.storage import Storage
from mirror.sync.jobs import SyncManager
from mirror.sync.scheduler import Scheduler
from mirror.upstream import Upstream

CONFIG = web.AppKey("config", Config)
DRAIN = web.AppKey("drain", Drain)
METRICS = web.AppKey("metrics", Metrics)
# A Storage given to create_app instead of the configured backend (tests wrap one to inject faults).
STORAGE_OVERRIDE = web.AppKey("storage_override", Storage)
STORAGE = web.AppKey("storage", Storage)
UPSTREAM = web.AppKey("upstream", Upstream)
RECORDS = web.AppKey("records", Records)
POLICY = web.AppKey("policy", Policy)
ALLOWLIST = web.AppKey("allowlist", AllowList)
REVISIONS = web.AppKey("revisions", Revisions)
ENTRIES = web.AppKey("entries", Entries)
LFS = web.AppKey("lfs", LfsObjects)
LISTINGS = web.AppKey("listings", Metadata)
BLOBS = web.AppKey("blobs", Blobs)
FILLER = web.AppKey("filler", Filler)
# Set only when replicas share fills (server.advertise_url): the client to the other replicas.
REPLICAS = web.AppKey("replicas", Replicas)
RESPONSES = web.AppKey("responses", ResponseCache)
PURGE = web.AppKey("purge", Purge)
SYNC = web.AppKey("sync", SyncManager)
SCHEDULER = web.AppKey("scheduler", Scheduler)
ACCESS = web.AppKey("access", AccessLog)
XET_SECRET = web.AppKey("xet_secret", XetSecret)
# CAS token -> the Hub token it was issued for (this replica's memory): Xet fills of gated repos use it.
XET_TOKENS = web.AppKey("xet_tokens", TTLCache)
MAINTENANCE = web.AppKey("maintenance", Maintenance)
