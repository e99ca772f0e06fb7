"""Typed configuration: built-in defaults < YAML file < HUB_MIRROR_* environment < command-line flags.

Loaded and validated once at start; nothing else in the package reads the environment.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

ENV_PREFIX = "HUB_MIRROR_"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("text", "json")


class ConfigError(ValueError):
    """The configuration is invalid; the message says which key and why."""


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8090
    # Absolute URL clients use to reach the mirror (behind a load balancer). Empty: taken from each
    # request's Host header. Used where the mirror must write its own address (pagination Link).
    public_url: str = ""
    # URL at which the other replicas sharing this storage reach this one (http://10.0.0.5:8090).
    # Set: a replica asked for a blob that another one is filling streams it from that one (one
    # upstream fetch across replicas). Empty: each replica fills on its own.
    advertise_url: str = ""
    # Seconds a shutdown (SIGTERM) gives requests in flight and blobs being published; then clients
    # still downloading are cut and the process exits.
    shutdown_grace: float = 10.0


@dataclass
class UpstreamConfig:
    url: str = "https://huggingface.co"
    connect_timeout: float = 10.0
    # Longest silence tolerated on an upstream body before the fill resumes with Range.
    read_timeout: float = 30.0
    max_connections: int = 64
    # Attempts to resume a broken upstream body without any progress in between.
    resume_attempts: int = 5
    # Token used for upstream calls that no client token accompanies (scheduled work). Optional.
    token: str = ""
    # Consecutive upstream failures (connect errors, timeouts, 5xx) after which upstream requests
    # fail at once for breaker_cooldown seconds, so nobody waits on a dead upstream; 0 = never.
    breaker_failures: int = 5
    # Seconds the breaker stays open; then one trial request decides whether it closes.
    breaker_cooldown: float = 15.0
    # Seconds between background probes of the upstream while no client traffic has said whether
    # it answers, so hub_mirror_upstream_up is true on an idle mirror; 0 turns the probe off.
    probe_interval: float = 30.0
    # Fill LFS files the upstream stores in Xet by chunks from its Xet CAS (X-Xet-Hash on the resolve),
    # reusing the chunks of files already cached: a new revision costs about its changed chunks.
    # Off: every fill is one HTTP download of the whole file (the upstream's CDN).
    xet: bool = False


@dataclass
class CacheConfig:
    dir: str = "./hub-mirror-cache"
    # How long a branch/tag -> commit answer is trusted before asking upstream again.
    revision_ttl: float = 60.0
    # How long an access decision (token, gated/private repo) is trusted.
    access_ttl: float = 300.0
    # Mutable listings (refs) are re-fetched after this many seconds.
    refs_ttl: float = 60.0
    # Once a TTL (revision, refs, access) has passed, a client waits at most this many seconds for
    # upstream's new answer; then it gets the last known one while the refresh goes on behind it.
    stale_wait: float = 1.0
    chunk_size: int = 1024 * 1024
    # No longer used (accepted so existing files still load): a blob whose fill failed verification
    # after serving bytes is recorded in storage for good, and Range requests for it are never
    # served from then on (docs/architecture.md, "Verification and resumes").
    poisoned_resume_window: float = 120.0
    # Longest one storage operation of a fill may take (a chunk write, discarding a failed fill;
    # the publish gets five times this) before the fill fails instead of hanging with its clients.
    storage_timeout: float = 120.0
    # Seconds a fill lease lasts without renewal (renewed every third of it while the fill runs);
    # used with server.advertise_url. Replicas' clocks must agree to well within it.
    fill_lease_ttl: float = 30.0
    # Most bytes of blobs to keep (suffixes K, M, G, T and Ki, Mi, Gi, Ti accepted: 500Gi); 0 = no
    # limit. Past evict_high of it, least recently read blobs are removed until under evict_low of
    # it. Blobs of pinned revisions of allow-listed repos (what sync keeps) are never removed.
    max_bytes: int = 0
    evict_high: float = 0.95
    evict_low: float = 0.85
    # Seconds between checks of the limit, by the replica holding the maintenance lease.
    evict_interval: float = 60.0
    # A blob read within this many seconds (on any replica) is never evicted: long downloads on
    # other replicas, and clients following presigned redirects, finish first.
    evict_min_idle: float = 3600.0
    # Seconds between writes of last-read times to storage (batched: no write per request).
    access_flush_interval: float = 60.0
    # Seconds between background garbage collections (0: only `hub-mirror gc`).
    gc_interval: float = 6 * 3600.0
    # Unreferenced blobs, staging leftovers and unfinished purges younger than this are left alone:
    # a fill or a purge may still be running.
    gc_grace: float = 24 * 3600.0
    # Bytes per second the background scrub re-hashes stored blobs at (0: off; `hub-mirror verify`
    # checks on demand).
    scrub_rate: int = 0


@dataclass
class StorageConfig:
    # "local": files under cache.dir. "s3": an S3-compatible bucket that several replicas can share.
    backend: str = "local"
    # S3 endpoint URL (MinIO, Ceph RGW, SeaweedFS); empty for AWS S3 itself. Credentials come from
    # the standard AWS chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, profiles, instance roles).
    s3_endpoint: str = ""
    s3_bucket: str = ""
    # Objects are stored at {s3_prefix}/{key}; replicas that share a cache use the same prefix.
    s3_prefix: str = ""
    s3_region: str = "us-east-1"
    # Bytes per multipart part (doubling every 1,000 parts, so no object is too large): each fill
    # holds the part being filled and the parts uploading (s3_parts_in_flight) in memory; a client
    # can follow a fill while it is less than about one part behind it.
    s3_part_size: int = 8 * 1024 * 1024
    # Unfinished multipart uploads older than this (seconds) are aborted at start: crashed fills
    # leave them. Keep it well above the longest fill, since other replicas may still be writing.
    s3_stale_upload_age: float = 24 * 3600
    # Most S3 requests in flight at once (threads and pooled connections).
    s3_max_concurrency: int = 32
    # Multipart parts of one fill uploading at once; each holds a part in memory until it is stored.
    s3_parts_in_flight: int = 2
    # Answer GETs of cached LFS files with a 302 to a presigned URL of the object, so clients that
    # can reach the object store download from it directly (HEAD is still answered by the mirror).
    s3_presigned_redirects: bool = False
    # Seconds a presigned URL stays valid.
    s3_presigned_expiry: int = 3600
    # Endpoint written into presigned URLs, when clients reach the store at another address than
    # the mirror does (https://s3.example.internal). Empty: s3_endpoint.
    s3_public_endpoint: str = ""


@dataclass
class HubConfig:
    # Remove xet fields from API answers (xetHash in listings), so clients ask the resolve first.
    strip_xet: bool = True
    # "strip": clients with hf_xet download over plain HTTP through the mirror. "serve": the mirror is
    # their Xet CAS (X-Xet-Hash on resolve, its own xet-read-token, reconstructions and chunk ranges
    # from its cache); needs upstream.xet. docs/xet.md.
    xet: str = "strip"
    # Secret that signs the CAS tokens and chunk URLs the mirror hands out in serve mode. Empty: one
    # generated once and kept in storage (shared by replicas on the same storage).
    xet_secret: str = ""


@dataclass
class LogConfig:
    # One of LOG_LEVELS, in any case.
    level: str = "INFO"
    # "text": human lines; "json": one JSON object per line, for log shippers.
    format: str = "text"


@dataclass
class PolicyConfig:
    # Serve only repos on the allow-list (RepoNotFound for others). Off: a pure pull-through cache.
    enforce_allowlist: bool = False


@dataclass
class AdminConfig:
    # Bearer token for /admin/*. Empty disables the admin API. Prefer HUB_MIRROR_ADMIN_TOKEN.
    token: str = ""


@dataclass
class SyncConfig:
    # Run the scheduled sync of allow-listed repos (one replica at a time holds the lease).
    enabled: bool = True
    # Seconds between scheduler passes (each pass starts the entries that are due).
    tick: float = 30.0
    # Files downloaded at once by one sync job.
    concurrency: int = 4
    # Seconds the scheduler lease lasts without renewal before another replica may take over.
    lease_ttl: float = 90.0
    # Attempts per upstream call when it answers 429 (honouring Retry-After / RateLimit).
    rate_limit_retries: int = 5
    # Bytes per second all sync downloads of this replica share; 0 = no cap.
    bandwidth_limit: int = 0


@dataclass
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    hub: HubConfig = field(default_factory=HubConfig)
    log: LogConfig = field(default_factory=LogConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)

    def validate(self) -> Config:
        if not 0 < self.server.port < 65536:
            raise ConfigError(f"server.port must be 1..65535, got {self.server.port}")
        if self.server.shutdown_grace < 0:
            raise ConfigError("server.shutdown_grace must be >= 0")
        _check_url("upstream.url", self.upstream.url)
        if self.server.public_url:
            _check_url("server.public_url", self.server.public_url)
        if self.server.advertise_url:
            _check_url("server.advertise_url", self.server.advertise_url)
        for name in ("revision_ttl", "access_ttl", "refs_ttl", "poisoned_resume_window"):
            if getattr(self.cache, name) < 0:
                raise ConfigError(f"cache.{name} must be >= 0")
        if self.cache.storage_timeout <= 0:
            raise ConfigError("cache.storage_timeout must be > 0")
        if self.cache.stale_wait < 0:
            raise ConfigError("cache.stale_wait must be >= 0")
        if self.cache.chunk_size < 4096:
            raise ConfigError("cache.chunk_size must be at least 4096 bytes")
        if self.cache.fill_lease_ttl < 3:
            raise ConfigError("cache.fill_lease_ttl must be at least 3 seconds")
        _check_lifecycle(self.cache, self.storage)
        if self.upstream.resume_attempts < 0 or self.upstream.max_connections < 1:
            raise ConfigError("upstream.resume_attempts must be >= 0 and upstream.max_connections >= 1")
        if self.upstream.breaker_failures < 0:
            raise ConfigError("upstream.breaker_failures must be >= 0 (0 = never open)")
        if self.upstream.probe_interval < 0:
            raise ConfigError("upstream.probe_interval must be >= 0 (0 = no background probe)")
        if self.upstream.breaker_cooldown <= 0:
            raise ConfigError("upstream.breaker_cooldown must be > 0")
        if self.storage.backend not in ("local", "s3"):
            raise ConfigError(f"storage.backend must be 'local' or 's3', got {self.storage.backend!r}")
        if self.storage.backend == "s3":
            _check_s3(self.storage)
        if self.sync.bandwidth_limit < 0:
            raise ConfigError("sync.bandwidth_limit must be >= 0 (0 = no cap)")
        if self.sync.tick <= 0 or self.sync.concurrency < 1 or self.sync.lease_ttl <= self.sync.tick:
            raise ConfigError("sync.tick must be > 0, sync.concurrency >= 1 and sync.lease_ttl > sync.tick")
        if self.admin.token and not re.fullmatch(r"[\x21-\x7e]+", self.admin.token):
            # Clients send it as a bearer token, which the mirror accepts only as printable ASCII.
            raise ConfigError("admin.token must be printable ASCII without spaces")
        if self.hub.xet not in ("strip", "serve"):
            raise ConfigError(f"hub.xet must be 'strip' or 'serve', got {self.hub.xet!r}")
        if self.hub.xet == "serve" and not self.upstream.xet:
            raise ConfigError("hub.xet: serve needs upstream.xet: true (the chunks it serves come from Xet fills)")
        if self.log.format not in LOG_FORMATS:
            raise ConfigError(f"log.format must be 'text' or 'json', got {self.log.format!r}")
        if self.log.level.upper() not in LOG_LEVELS:
            # Caught here: logging would otherwise fall back to INFO without a word.
            raise ConfigError(f"log.level must be one of {', '.join(LOG_LEVELS)}, got {self.log.level!r}")
        self.log.level = self.log.level.upper()
        self.upstream.url = self.upstream.url.rstrip("/")
        self.server.public_url = self.server.public_url.rstrip("/")
        self.server.advertise_url = self.server.advertise_url.rstrip("/")
        return self

    @property
    def cache_dir(self) -> Path:
        return Path(self.cache.dir)


def _check_url(key: str, value: str) -> None:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{key} must be an http(s) URL, got {value!r}")


_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
_PREFIX_RE = re.compile(r"^[A-Za-z0-9._\-]+(/[A-Za-z0-9._\-]+)*$")


def _check_s3(storage: StorageConfig) -> None:
    if not storage.s3_bucket:
        raise ConfigError("storage.s3_bucket is required when storage.backend is 's3'")
    if not _BUCKET_RE.match(storage.s3_bucket):
        raise ConfigError(f"storage.s3_bucket is not a valid bucket name: {storage.s3_bucket!r}")
    if storage.s3_endpoint:
        _check_url("storage.s3_endpoint", storage.s3_endpoint)
    prefix = storage.s3_prefix.strip("/")
    if prefix and (not _PREFIX_RE.match(prefix) or any(part in (".", "..") for part in prefix.split("/"))):
        raise ConfigError(f"storage.s3_prefix must be path segments of [A-Za-z0-9._-], got {storage.s3_prefix!r}")
    storage.s3_prefix = prefix
    if not 5 * 1024 * 1024 <= storage.s3_part_size <= 5 * 1024**3:
        raise ConfigError("storage.s3_part_size must be between 5 MiB and 5 GiB (S3 limits)")
    if storage.s3_stale_upload_age < 0:
        raise ConfigError("storage.s3_stale_upload_age must be >= 0")
    if storage.s3_max_concurrency < 1:
        raise ConfigError("storage.s3_max_concurrency must be >= 1")
    if not 1 <= storage.s3_parts_in_flight <= 16:
        raise ConfigError("storage.s3_parts_in_flight must be between 1 and 16")
    if storage.s3_public_endpoint:
        _check_url("storage.s3_public_endpoint", storage.s3_public_endpoint)
    # SigV4 presigned URLs are valid for at most 7 days.
    if not 1 <= storage.s3_presigned_expiry <= 7 * 24 * 3600:
        raise ConfigError("storage.s3_presigned_expiry must be between 1 and 604800 seconds")


def _check_lifecycle(cache: CacheConfig, storage: StorageConfig) -> None:
    if cache.max_bytes < 0 or cache.scrub_rate < 0:
        raise ConfigError("cache.max_bytes and cache.scrub_rate must be >= 0 (0 = off)")
    if not 0 < cache.evict_low < cache.evict_high <= 1:
        raise ConfigError("cache.evict_low and cache.evict_high must satisfy 0 < evict_low < evict_high <= 1")
    if cache.evict_interval <= 0 or cache.access_flush_interval <= 0 or cache.gc_interval < 0 or cache.gc_grace < 0:
        raise ConfigError(
            "cache.evict_interval and cache.access_flush_interval must be > 0,"
            " cache.gc_interval and cache.gc_grace >= 0"
        )
    # Replicas learn of each other's reads one flush late: a blob must stay idle well past that.
    if cache.evict_min_idle < 2 * cache.access_flush_interval:
        raise ConfigError("cache.evict_min_idle must be at least twice cache.access_flush_interval")
    redirects = storage.backend == "s3" and storage.s3_presigned_redirects
    if redirects and cache.evict_min_idle < storage.s3_presigned_expiry:
        raise ConfigError(
            "cache.evict_min_idle must be at least storage.s3_presigned_expiry: a client holding a presigned URL"
            " must still find the object"
        )


_SIZE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([KMGT]i?)B?", re.IGNORECASE)
_SIZE_UNITS = {"k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


def _coerce(key: str, raw: Any, typ: Any) -> Any:
    try:
        if typ is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if typ is int:
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError(raw)
            if isinstance(raw, str) and (size := _SIZE.fullmatch(raw.strip())):
                return int(float(size.group(1)) * _SIZE_UNITS[size.group(2).lower()])  # sizes: 500Gi, 1.5T
            if isinstance(raw, str) and not re.fullmatch(r"-?[0-9]+", raw.strip()):
                raise ValueError(raw)
            return int(raw)
        if typ is float:
            if isinstance(raw, bool):
                raise ValueError(raw)
            return float(raw)
        if not isinstance(raw, (str, int, float)) or isinstance(raw, bool):
            raise ValueError(raw)
        return str(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: cannot read {raw!r} as {typ.__name__}") from None


def _section_types(section_cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(section_cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(section_cls)}


def _apply(config: Config, values: Mapping[str, Mapping[str, Any]], origin: str) -> None:
    sections = _section_types(Config)
    for section_name, section_values in values.items():
        if section_name not in sections:
            raise ConfigError(f"{origin}: unknown section {section_name!r}")
        if not isinstance(section_values, Mapping):
            raise ConfigError(f"{origin}: section {section_name!r} must be a mapping")
        section = getattr(config, section_name)
        types_ = _section_types(type(section))
        for key, raw in section_values.items():
            if key not in types_:
                raise ConfigError(f"{origin}: unknown key {section_name}.{key}")
            typ = types_[key]
            if isinstance(typ, types.UnionType):
                typ = next(t for t in typing.get_args(typ) if t is not type(None))
            setattr(section, key, _coerce(f"{section_name}.{key}", raw, typ))


def _env_values(environ: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """HUB_MIRROR_<SECTION>_<KEY>=value, e.g. HUB_MIRROR_UPSTREAM_URL."""
    out: dict[str, dict[str, str]] = {}
    sections = _section_types(Config)
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        rest = name[len(ENV_PREFIX) :].lower()
        for section in sections:
            if rest.startswith(section + "_"):
                out.setdefault(section, {})[rest[len(section) + 1 :]] = value
                break
    return out


def load_config(
    path: str | Path | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    config = Config()
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
        if not isinstance(data, Mapping):
            raise ConfigError(f"config file {path} must hold a mapping of sections")
        _apply(config, data, str(path))
    env = _env_values(os.environ if environ is None else environ)
    try:
        _apply(config, env, "environment")
    except ConfigError as exc:
        raise ConfigError(f"{exc} (from {ENV_PREFIX}* variables)") from None
    if overrides:
        cleaned = {s: {k: v for k, v in kv.items() if v is not None} for s, kv in overrides.items()}
        _apply(config, cleaned, "flags")
    return config.validate()
