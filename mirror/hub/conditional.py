"""Conditional requests (RFC 9110 §13): If-Match, If-None-Match, If-Range against a file's ETag.

The ETag of a file is its content hash, so it is a strong validator: equal tags mean equal bytes.
"""

from __future__ import annotations

from collections.abc import Mapping


def _tags(header: str) -> list[str]:
    """The entity tags of a list header, weak ones (W/"...") compared by their opaque part."""
    tags = []
    for part in header.split(","):
        tag = part.strip()
        if tag.startswith("W/"):
            tag = tag[2:]
        if tag:
            tags.append(tag)
    return tags


def precondition_status(headers: Mapping[str, str], etag: str, method: str) -> int | None:
    """304 or 412 when a precondition decides the answer, None to answer normally.

    `etag` is the quoted tag the response would carry. If-Match is evaluated first (412 on a
    mismatch); If-None-Match then gives 304 for GET and HEAD and 412 for other methods.
    """
    if_match = headers.get("If-Match")
    if if_match is not None:
        tags = _tags(if_match)
        if "*" not in tags and etag not in tags:
            return 412
    if_none_match = headers.get("If-None-Match")
    if if_none_match is not None:
        tags = _tags(if_none_match)
        if "*" in tags or etag in tags:
            return 304 if method in ("GET", "HEAD") else 412
    return None


def range_applies(headers: Mapping[str, str], etag: str) -> bool:
    """False when If-Range names other content: the client's partial copy is stale, send it all."""
    if_range = headers.get("If-Range")
    # A date (not a tag) cannot be checked against content: the strong tag is the only safe match.
    return if_range is None or if_range.strip() == etag
