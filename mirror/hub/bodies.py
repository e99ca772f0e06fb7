"""Request bodies, read with a bound on what they may make the mirror hold.

The server hands bodies over as they came on the wire (aiohttp's auto-decompression is off, see
app.py): git's gzipped upload-pack requests go upstream exactly as git sent them. Every body the
mirror reads itself comes through here instead, where gzip and deflate are decoded with the size
limit applied to the decoded bytes, so a small compressed body cannot expand past it.
"""

from __future__ import annotations

import zlib

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from mirror.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType

READ_CHUNK = 64 * 1024
# zlib window bits: gzip framing, and the zlib framing HTTP's "deflate" means.
DECODERS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


async def read_body(request: web.Request, limit: int, what: str) -> bytes:
    """The request body, decoded, refused with 413 past `limit` bytes (on the wire or decoded)."""
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in ("", "identity") and encoding not in DECODERS:
        raise UnsupportedMediaType(f"{what}: Content-Encoding {encoding[:40]!r} is not supported (gzip or deflate)")
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"{what} is larger than {limit} bytes")
    decoder = zlib.decompressobj(DECODERS[encoding]) if encoding in DECODERS else None
    body = bytearray()
    wire = 0
    try:
        while chunk := await request.content.read(READ_CHUNK):
            wire += len(chunk)
            if decoder is not None:
                chunk = decoder.decompress(chunk, limit + 1 - len(body))
                if decoder.unconsumed_tail:
                    raise PayloadTooLarge(f"{what} is larger than {limit} bytes")
            body += chunk
            if len(body) > limit or wire > limit:
                raise PayloadTooLarge(f"{what} is larger than {limit} bytes")
        if decoder is not None:
            body += decoder.flush()
            if not decoder.eof:
                raise BadRequest(f"{what} could not be read: its {encoding} stream ends early")
    except zlib.error:
        raise BadRequest(f"{what} could not be read: it is not valid {encoding}") from None
    except (HttpProcessingError, web.RequestPayloadError) as exc:
        # Broken chunking: the client's fault, said without echoing its bytes.
        cause = exc.__cause__ if isinstance(exc, web.RequestPayloadError) and exc.__cause__ else exc
        raise BadRequest(f"{what} could not be read: {type(cause).__name__}") from None
    if len(body) > limit:
        raise PayloadTooLarge(f"{what} is larger than {limit} bytes")
    return bytes(body)
