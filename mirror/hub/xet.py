"""Stripping xet signals, so clients with hf_xet installed download through the mirror over HTTP.

A client switches to xet on `X-Xet-Hash` plus a xet Link/refresh route, or on `xetHash` in a tree
listing; the xet CAS is reached directly, bypassing the mirror. (shared/docs/clients-and-xet.md describes the protocol.)
"""

from __future__ import annotations

from typing import Any

XET_JSON_KEYS = frozenset({"xetHash", "xetEnabled"})


def strip_json(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: strip_json(v) for k, v in value.items() if k not in XET_JSON_KEYS}
    if isinstance(value, list):
        return [strip_json(v) for v in value]
    return value
