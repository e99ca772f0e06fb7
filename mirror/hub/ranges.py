"""HTTP Range requests: a single byte range, as HF clients, curl and aria2c send them."""

from __future__ import annotations

import re

from mirror.errors import RangeNotSatisfiable

_DIGITS = re.compile(r"^[0-9]*$")
# Clients that, asking for a Range and getting the whole file (200), start over (huggingface_hub,
# and so transformers and datasets) or refuse to resume (curl: exit 33; aria2c: an error). wget -c
# instead skips as many bytes of the 200 body as its partial file holds and appends the rest: a
# complete file of the right size built on the partial file's bytes. Unknown clients are treated
# like wget.
RESTART_ON_FULL_ANSWER = ("huggingface_hub/", "hf_hub/", "curl/", "aria2/", "hub-mirror/")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(start, end_exclusive) for a satisfiable single range, None for "send everything".

    Raises RangeNotSatisfiable (416) for a range past the end. Multi-range and malformed headers
    are ignored, as RFC 9110 allows, and the whole body is sent.
    """
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, sep, last = spec.strip().partition("-")
    first, last = first.strip(), last.strip()
    if not sep or not _DIGITS.match(first) or not _DIGITS.match(last) or (first == last == ""):
        return None
    try:
        if first == "":
            suffix = int(last)
            if suffix < 0:
                return None
            if suffix == 0 or size == 0:
                raise _unsatisfiable(size)
            return max(0, size - suffix), size
        start = int(first)
        end = size - 1 if last == "" else int(last)
    except ValueError:
        return None
    if start < 0:
        return None
    if start >= size:
        raise _unsatisfiable(size)
    if end < start:
        return None
    return start, min(end, size - 1) + 1


def _unsatisfiable(size: int) -> RangeNotSatisfiable:
    return RangeNotSatisfiable(
        f"Requested range not satisfiable (file size {size})", headers={"Content-Range": f"bytes */{size}"}
    )


def restarts_on_full_answer(user_agent: str | None) -> bool:
    """Whether this client handles a 200 to its Range request without appending it to a partial file."""
    return user_agent is not None and any(family in user_agent for family in RESTART_ON_FULL_ANSWER)
