"""A file's bytes rebuilt from the upstream's Xet CAS, reusing the chunks of files already cached.

A file the upstream stores in Xet is a list of terms: chunk ranges of xorbs (mirror/xetcas.py).
For each term the bytes come from a cached blob that holds the same chunks of the same xorb (the
chunk index below), else from the term's xorb range at the upstream's CAS, whose chunks are
checked and decoded here (mirror/xet/format.py). A new revision that changes a few chunks of a
file therefore costs about those chunks upstream, in fills and in sync alike.

Verification is the fill's, as for every blob: the bytes are hashed as they go and kept only if
they are the file's sha256, the last byte held back until then. Only after that are the file's
chunk ranges added to the index, so the index only ever points at bytes of verified files. An
index entry whose blob was evicted since is skipped (the chunks come from upstream).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from mirror.cache import keys
from mirror.cache.metadata.entries import FileEntry
from mirror.cache.records import Records
from mirror.errors import HubError, StorageError, UpstreamUnavailable
from mirror.metrics import Metrics
from mirror.storage import Storage
from mirror.xet.format import HEADER_SIZE, RawChunk, XetFormatError, decode_chunk, parse_chunk_header
from mirror.xetcas import Reconstruction, Term, XetCas, XorbUrlRefused

log = logging.getLogger(__name__)

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
    if not isinstance(holder, dict):
        return None
    etag, start, end, offset, lengths = (holder.get(k) for k in ("etag", "start", "end", "offset", "lengths"))
    if not isinstance(etag, str) or not all(isinstance(v, int) for v in (start, end, offset)):
        return None
    if not isinstance(lengths, list) or len(lengths) != end - start or not all(isinstance(n, int) for n in lengths):
        return None
    if not (start <= term.start and term.end <= end):
        return None
    first = offset + sum(lengths[: term.start - start])
    part = tuple(lengths[term.start - start : term.end - start])
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


@dataclass
class XetBody:
    """One file's bytes from its reconstruction; `remember` indexes its chunks once the fill verified them."""

    source: XetSource
    entry: FileEntry
    token: str | None
    chunk_size: int
    spans: list[Span] = field(default_factory=list)
    whole: bool = True  # every term was read in full from the file's start (its spans are exact)
    _bad_holders: set[str] = field(default_factory=set)

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

    async def _pieces(self) -> AsyncIterator[bytes]:
        entry, pos, failures = self.entry, 0, 0
        assert entry.xet_hash is not None
        while pos < entry.size:
            try:
                byte_range = None if pos == 0 else (pos, entry.size - 1)
                found = await self.source.cas.reconstruction(entry.repo, entry.commit, entry.xet_hash, self.token,
                                                             byte_range)  # fmt: skip
                skip = found.offset
                if byte_range is None and skip:
                    raise XetFormatError("a whole file's reconstruction starts inside its first term")
                for term in found.terms:
                    lengths: list[int] = []
                    got = 0
                    async for piece in self._term(found, term, lengths):
                        got += len(piece)
                        if skip >= len(piece):
                            skip -= len(piece)
                            continue
                        out = piece[skip:] if skip else piece
                        skip = 0
                        if pos + len(out) > entry.size:
                            raise XetFormatError("the reconstruction rebuilds more bytes than the file has")
                        pos += len(out)
                        failures = 0
                        yield out
                    if got != term.unpacked_length:
                        raise XetFormatError(f"a term gave {got} bytes, the reconstruction says {term.unpacked_length}")
                    if self.whole:
                        self.spans.append(Span(term.xorb, term.start, term.end, pos - got, lengths))
                if pos < entry.size:
                    raise XetFormatError(f"the reconstruction ends at byte {pos} of {entry.size}")
            except (XorbUrlRefused, UpstreamUnavailable, XetFormatError, StorageError) as exc:
                failures += 1
                self.whole = False  # a resumed file's terms start mid-way: its spans are not indexed
                if failures > self.source.attempts:
                    raise UpstreamUnavailable(
                        f"Xet transfer of {entry.label} failed {failures} times in a row: {exc}"
                    ) from exc
                log.warning("Xet transfer of %s broke at byte %d (%s); resuming", entry.label, pos, exc)
                await asyncio.sleep(min(0.1 * 2**failures, 5.0))

    async def _term(self, found: Reconstruction, term: Term, lengths: list[int]) -> AsyncIterator[bytes]:
        """The term's bytes: from a cached blob holding its chunks, else decoded from its xorb range."""
        held = await self.source.index.find(term, frozenset(self._bad_holders))
        if held is not None and await self.source.storage.stat(held.blob_key) is not None:
            lengths.extend(held.lengths)
            try:
                async for piece in self.source.storage.read_range(held.blob_key, held.first, held.last):
                    self.source.count("cache", len(piece))
                    yield piece
                return
            except (StorageError, OSError) as exc:
                self._bad_holders.add(held.blob_key)
                raise StorageError(f"a cached file with chunks of xorb {term.xorb} could not be read: {exc}") from exc
        fetch = found.fetch_for(term)
        index = fetch.start
        buffer = bytearray()
        body = self.source.cas.xorb_range(fetch, chunk_size=self.chunk_size)
        async with contextlib.aclosing(body) as pieces:
            async for piece in pieces:
                buffer += piece
                used = 0
                # Whole chunks out of what arrived; a partial one waits for the next piece (memory: one chunk).
                while len(buffer) - used >= HEADER_SIZE:
                    header = parse_chunk_header(buffer, used)
                    end = used + HEADER_SIZE + header.compressed_length
                    if end > len(buffer):
                        break
                    if term.start <= index < term.end:
                        raw = RawChunk(used, header, bytes(buffer[used + HEADER_SIZE : end]))
                        # LZ4 releases the GIL: big chunks decode in a worker, small ones inline.
                        big = len(raw.data) > 65536
                        data = await asyncio.to_thread(decode_chunk, raw) if big else decode_chunk(raw)
                        lengths.append(len(data))
                        self.source.count("upstream", len(data))
                        yield data
                    index += 1
                    used = end
                del buffer[:used]
        if buffer or index != fetch.end:
            raise XetFormatError(f"xorb {fetch.xorb} range holds {index - fetch.start} whole chunks, not "
                                 f"{fetch.end - fetch.start}")  # fmt: skip

    async def remember(self) -> None:
        """Index the file's chunk ranges: called once its bytes were verified and published."""
        if not self.whole or not self.spans:
            return
        try:
            await self.source.index.add(self.entry.etag, self.spans)
            terms = [span.to_json(self.entry.etag) for span in self.spans]
            record = {"xet": self.entry.xet_hash, "size": self.entry.size, "terms": terms}
            await self.source.index.records.put_best_effort(keys.xet_terms_key(self.entry.etag), record)
        except (HubError, StorageError) as exc:
            log.warning("could not index the Xet chunks of %s: %s", self.entry.label, exc)
