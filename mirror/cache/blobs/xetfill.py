"""A file's bytes rebuilt from the upstream's Xet CAS, reusing the chunks of files already cached.

A file the upstream stores in Xet is a list of terms: chunk ranges of xorbs (mirror/xetcas.py).
For each term the bytes come from a cached blob that holds the same chunks of the same xorb (the
chunk index below), else from the term's xorb range at the upstream's CAS, whose chunks are
checked and decoded here (mirror/xet/format.py). A new revision that changes a few chunks of a
file therefore costs about those chunks upstream, in fills and in sync alike.

Verification is the fill's, as for every blob: the bytes are hashed as they go and kept only if
they are the file's sha256, the last byte held back until then; the chunks must also hash to the
file's Xet hash. Only after that are the file's chunk ranges added to the index (just before the
blob is published), so the index only ever points at bytes of verified files. An index entry
whose blob is not in storage (not published yet, or failed to, or evicted since) is skipped (the
chunks come from upstream). Before that, each xorb range is checked against its xorb's hash
where it can be (cache/blobs/xetplan.py), so clients of the mirror's CAS can have those bytes
while the fill runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from mirror.cache import keys
from mirror.cache.blobs.xetahead import Ahead
from mirror.cache.blobs.xetplan import ChunkMap, PlannedTerm
from mirror.cache.metadata.entries import FileEntry
from mirror.cache.records import Records
from mirror.errors import HubError, IntegrityError, StorageError, UpstreamUnavailable
from mirror.metrics import Metrics
from mirror.repo import OID_RE
from mirror.storage import Storage
from mirror.xet.format import (
    HEADER_SIZE,
    MerkleHasher,
    RawChunk,
    XetFormatError,
    chunk_hash,
    decode_chunk,
    hash_from_str,
    hash_to_str,
    parse_chunk_header,
)
from mirror.xetcas import Reconstruction, Term, XetCas, XorbUrlRefused

log = logging.getLogger(__name__)

# Decoded bytes of one network piece below which its chunks are decoded and hashed inline.
INLINE_DECODE = 128 * 1024
# Files per xorb the index remembers: a few revisions of a file share a xorb; more adds nothing.
MAX_HOLDERS = 8


@dataclass
class Span:
    """Chunks [start, end) of a xorb are bytes [offset, offset + sum(lengths)) of a file."""

    xorb: str
    start: int
    end: int
    offset: int
    lengths: list[int]

    def to_json(self, etag: str) -> dict[str, Any]:
        return {
            "xorb": self.xorb,
            "etag": etag,
            "start": self.start,
            "end": self.end,
            "offset": self.offset,
            "lengths": self.lengths,
        }


@dataclass(frozen=True)
class Held:
    """Where a cached blob holds chunks of a xorb: bytes [first, last) of the blob's key."""

    blob_key: str
    first: int
    last: int
    lengths: tuple[int, ...]


class ChunkIndex:
    """Which cached blobs hold which chunk ranges of which xorb (small records, best effort)."""

    def __init__(self, records: Records) -> None:
        self.records = records

    async def find(self, term: Term, skip: frozenset[str] = frozenset()) -> Held | None:
        record = await self.records.get(keys.xorb_index_key(term.xorb))
        holders = record.get("holders") if isinstance(record, dict) else None
        for holder in holders if isinstance(holders, list) else []:
            found = _held(holder, term)
            if found is not None and found.blob_key not in skip:
                return found
        return None

    async def add(self, etag: str, spans: list[Span]) -> None:
        for span in spans:
            key = keys.xorb_index_key(span.xorb)
            record = await self.records.get(key)
            holders = record.get("holders") if isinstance(record, dict) else None
            kept = [h for h in holders if isinstance(h, dict) and h.get("etag") != etag] if holders else []
            await self.records.put_best_effort(key, {"holders": [span.to_json(etag), *kept][:MAX_HOLDERS]})


def _held(holder: Any, term: Term) -> Held | None:
    """The bytes of the term's chunks in the holder's blob, if it covers them (damaged records: None)."""
    span = PlannedTerm.from_record(holder)  # a holder is a span of a split record, plus its etag
    etag = holder.get("etag") if span is not None else None
    if span is None or not isinstance(etag, str) or not OID_RE.fullmatch(etag):
        return None
    if not (span.start <= term.start and term.end <= span.end):
        return None
    lengths = holder["lengths"]
    first = span.offset + sum(lengths[: term.start - span.start])
    part = tuple(lengths[term.start - span.start : term.end - span.start])
    if sum(part) != term.unpacked_length:
        return None
    return Held(keys.blob_key(etag), first, first + sum(part), part)


class XetSource:
    """Bodies of files stored in Xet upstream, for fills (one XetBody per fill)."""

    def __init__(
        self, cas: XetCas, storage: Storage, records: Records, attempts: int, metrics: Metrics | None = None
    ) -> None:
        self.cas = cas
        self.storage = storage
        self.index = ChunkIndex(records)
        self.attempts = attempts
        self.metrics = metrics

    def body(self, entry: FileEntry, token: str | None, chunk_size: int) -> XetBody:
        return XetBody(self, entry, token, chunk_size)

    def count(self, source: str, amount: int) -> None:
        if self.metrics is not None:
            self.metrics.xet_bytes.labels(source).inc(amount)

    def checked(self, verified: bool) -> None:
        if self.metrics is not None:
            self.metrics.xet_xorb_checks.labels("verified" if verified else "unverified").inc()


@dataclass
class XetBody:
    """One file's bytes from its reconstruction.

    While it runs it publishes what clients streaming the file through the mirror's CAS need
    (cache/blobs/xetplan.py): `plan`, the terms of the file's whole reconstruction, as soon as it is
    known; `chunks_map`, each chunk produced and which bytes are verified. `on_change` is called
    whenever more bytes are verified. `remember` indexes the file once the fill verified it.
    """

    source: XetSource
    entry: FileEntry
    token: str | None
    chunk_size: int
    plan: list[PlannedTerm] | None = None
    chunk_map: ChunkMap = field(default_factory=ChunkMap)
    on_change: Callable[[], None] = lambda: None
    whole: bool = True  # every term was read from the file's first reconstruction (its xorbs name its bytes)
    _bad_holders: set[str] = field(default_factory=set)
    _file_hash: MerkleHasher = field(default_factory=MerkleHasher)
    _floor: int = 0  # bytes before this offset came from an earlier reconstruction of this fill

    async def chunks(self) -> AsyncIterator[bytes]:
        """The file's bytes in pieces of about `chunk_size`: Xet chunks are ~64 KiB, and each piece
        costs the fill a queue hand-off and a hashing thread hop."""
        pieces: list[bytes] = []
        held = 0
        async with contextlib.aclosing(self._pieces()) as source:
            async for piece in source:
                pieces.append(piece)
                held += len(piece)
                if held >= self.chunk_size:
                    yield b"".join(pieces)
                    pieces, held = [], 0
        if pieces:
            yield b"".join(pieces)
        # Every byte is in: the chunks must also be the file the Hub named by its Xet hash.
        assert self.entry.xet_hash is not None
        if self._file_hash.total_size != self.entry.size or self._file_hash.file_hash() != hash_from_str(
            self.entry.xet_hash
        ):
            raise IntegrityError(f"the Xet chunks of {self.entry.label} do not hash to its Xet hash; discarded")

    async def _pieces(self) -> AsyncIterator[bytes]:
        entry, pos, failures = self.entry, 0, 0
        assert entry.xet_hash is not None
        while pos < entry.size:
            try:
                byte_range = None if pos == 0 else (pos, entry.size - 1)
                found = await self.source.cas.reconstruction(entry.repo, entry.commit, entry.xet_hash, self.token,
                                                             byte_range)  # fmt: skip
                if byte_range is None and found.offset:
                    raise XetFormatError("a whole file's reconstruction starts inside its first term")
                if self.plan is None:
                    self._set_plan(found)
                # The first term's first chunk starts `offset` bytes before the next byte the fill needs.
                chunk_at = pos - found.offset
                self._floor = pos
                ahead = Ahead(self.source.cas, self.chunk_size)
                try:
                    async for out in self._rebuilt(found, ahead, chunk_at, pos):
                        pos += len(out)
                        failures = 0
                        yield out
                finally:
                    await ahead.close()
                if pos < entry.size:
                    raise XetFormatError(f"the reconstruction ends at byte {pos} of {entry.size}")
            except (XorbUrlRefused, UpstreamUnavailable, XetFormatError, StorageError) as exc:
                failures += 1
                self.whole = False  # a resumed file's terms start mid-way: its xorbs are not indexed
                if failures > self.source.attempts:
                    raise UpstreamUnavailable(
                        f"Xet transfer of {entry.label} failed {failures} times in a row: {exc}"
                    ) from exc
                log.warning("Xet transfer of %s broke at byte %d (%s); resuming", entry.label, pos, exc)
                await asyncio.sleep(min(0.1 * 2**failures, 5.0))

    async def _rebuilt(self, found: Reconstruction, ahead: Ahead, chunk_at: int, pos: int) -> AsyncIterator[bytes]:
        """The bytes from `pos` on that the reconstruction's terms rebuild (its first chunk is at `chunk_at`)."""
        entry = self.entry
        terms = found.terms
        skip = frozenset(self._bad_holders)
        # Each term's holder is looked up once (index records are read from storage, uncached), by
        # the look-ahead below; kept only until the term is rebuilt.
        holders: dict[int, Held | None] = {}
        for number, term in enumerate(terms):
            # The next few ranges that must come from upstream start now, while this one is decoded.
            for later in range(number, min(len(terms), number + 1 + ahead.depth)):
                if later not in holders:
                    holders[later] = await self.source.index.find(terms[later], skip)
                if holders[later] is None:
                    ahead.want(found.fetch_for(terms[later]))
            term_at = chunk_at
            async for data in self._term(found, term, chunk_at, ahead, holders.pop(number)):
                chunk_at += len(data)
                if chunk_at <= pos:
                    continue  # a resumed range starts inside a chunk the fill had
                out = data[len(data) - (chunk_at - pos) :] if chunk_at - len(data) < pos else data
                if pos + len(out) > entry.size:
                    raise XetFormatError("the reconstruction rebuilds more bytes than the file has")
                pos += len(out)
                yield out
            if chunk_at - term_at != term.unpacked_length:
                raise XetFormatError(f"a term gave {chunk_at - term_at} bytes, the reconstruction says "
                                     f"{term.unpacked_length}")  # fmt: skip

    def _set_plan(self, found: Reconstruction) -> None:
        plan, offset = [], 0
        for term in found.terms:
            plan.append(PlannedTerm(term.xorb, term.start, term.end, offset, term.unpacked_length))
            offset += term.unpacked_length
        if offset != self.entry.size:
            raise XetFormatError(f"the reconstruction's terms hold {offset} bytes, the file {self.entry.size}")
        self.plan = plan
        self.on_change()

    def _chunk(self, at: int, data: bytes, digest: bytes | None = None) -> None:
        """Account for a chunk produced at file offset `at`: the chunk map and the file's Xet hash."""
        try:
            new = self.chunk_map.add(at, len(data))
        except ValueError as exc:
            raise XetFormatError(f"the reconstruction of {self.entry.label} skips bytes: {exc}") from exc
        if new:
            self._file_hash.add(digest if digest is not None else chunk_hash(data), len(data))

    async def _term(
        self, found: Reconstruction, term: Term, at: int, ahead: Ahead, held: Held | None
    ) -> AsyncIterator[bytes]:
        """The term's chunks, one at a time: from the cached blob holding them (`held`, from the chunk
        index), else decoded from its xorb range.

        `at` is the file offset of the term's first chunk. The term's bytes are marked verified when
        they came from a verified blob, or from a xorb range that hashes to the xorb's hash.
        """
        if held is not None and await self.source.storage.stat(held.blob_key) is not None:
            try:
                async for data in _split(self.source.storage.read_range(held.blob_key, held.first, held.last),
                                         held.lengths):  # fmt: skip
                    self.source.count("cache", len(data))
                    self._chunk(at, data)
                    at += len(data)
                    yield data
            except (StorageError, OSError) as exc:
                self._bad_holders.add(held.blob_key)
                raise StorageError(f"a cached file with chunks of xorb {term.xorb} could not be read: {exc}") from exc
            self.chunk_map.verify(max(at - term.unpacked_length, self._floor), at)
            self.on_change()
            return
        fetch = found.fetch_for(term)
        first = at
        index = fetch.start
        # Only a range from the xorb's first chunk can be checked against the xorb's hash.
        xorb = MerkleHasher() if fetch.start == 0 else None
        buffer = bytearray()
        body = ahead.body(fetch)
        async with contextlib.aclosing(body) as pieces:
            async for piece in pieces:
                buffer += piece
                # Whole chunks out of what arrived; a partial one waits for the next piece (memory: one chunk).
                raws, used = [], 0
                with memoryview(buffer) as view:
                    while len(buffer) - used >= HEADER_SIZE:
                        header = parse_chunk_header(buffer, used)
                        end = used + HEADER_SIZE + header.compressed_length
                        if end > len(buffer):
                            break
                        if xorb is not None or term.start <= index < term.end:
                            raws.append((index, RawChunk(used, header, bytes(view[used + HEADER_SIZE : end]))))
                        index += 1
                        used = end
                del buffer[:used]
                if not raws:
                    continue
                # LZ4 and blake3 release the GIL: a piece's chunks are decoded and hashed in one worker
                # hop (one per chunk cost more in hops than the work); a little of them inline.
                if sum(len(raw.data) for _, raw in raws) > INLINE_DECODE:
                    decoded = await asyncio.to_thread(_decode_and_hash, raws)
                else:
                    decoded = _decode_and_hash(raws)
                taken = 0
                for number, data, digest in decoded:
                    if xorb is not None:
                        xorb.add(digest, len(data))
                    if term.start <= number < term.end:
                        taken += len(data)
                        self._chunk(at, data, digest)
                        at += len(data)
                        yield data
                self.source.count("upstream", taken)
        if buffer or index != fetch.end:
            raise XetFormatError(f"xorb {fetch.xorb} range holds {index - fetch.start} whole chunks, not "
                                 f"{fetch.end - fetch.start}")  # fmt: skip
        verified = xorb is not None and hash_to_str(xorb.root()) == term.xorb.lower()
        self.source.checked(verified)
        if verified:
            self.chunk_map.verify(max(first, self._floor), at)
            self.on_change()

    def terms(self) -> list[Span] | None:
        """The plan's terms with their chunk lengths, once every chunk is in (None if they do not tile it)."""
        spans = []
        for term in self.plan or ():
            lengths = self.chunk_map.lengths(term.offset, term.last)
            if lengths is None or len(lengths) != term.end - term.start:
                return None
            spans.append(Span(term.xorb, term.start, term.end, term.offset, lengths))
        return spans or None

    async def remember(self) -> None:
        """Record the file's terms (for serving it as a CAS) and index its chunks: called once its
        bytes were verified, just before the blob is published, so that a reader who finds the blob
        finds its terms too."""
        spans = self.terms()
        if spans is None:
            log.warning("the chunks of %s do not tile its reconstruction's terms: not indexed", self.entry.label)
            return
        try:
            if self.whole:
                # Only then did each term's bytes come from the xorb the term names.
                await self.source.index.add(self.entry.etag, spans)
            terms = [span.to_json(self.entry.etag) for span in spans]
            record = {"xet": self.entry.xet_hash, "size": self.entry.size, "terms": terms}
            await self.source.index.records.put_best_effort(keys.xet_terms_key(self.entry.etag), record)
        except (HubError, StorageError) as exc:
            log.warning("could not index the Xet chunks of %s: %s", self.entry.label, exc)


def _decode_and_hash(raws: list[tuple[int, RawChunk]]) -> list[tuple[int, bytes, bytes]]:
    """(chunk index, decoded bytes, chunk hash) of each chunk."""
    out = []
    for number, raw in raws:
        data = decode_chunk(raw)
        out.append((number, data, chunk_hash(data)))
    return out


async def _split(pieces: AsyncIterator[bytes], lengths: tuple[int, ...]) -> AsyncIterator[bytes]:
    """Storage pieces regrouped into chunks of `lengths` (memory: one chunk)."""
    buffer = bytearray()
    pending = iter(lengths)
    want = next(pending, None)
    async for piece in pieces:
        buffer += piece
        while want is not None and len(buffer) >= want:
            yield bytes(buffer[:want])
            del buffer[:want]
            want = next(pending, None)
    if want is not None or buffer:
        raise StorageError("a cached file is shorter or longer than the chunks its index records")
