"""Thread-safe fault injection rules consulted by the emulator's request handlers."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass
class Rule:
    kind: str  # "drop" | "corrupt" | "delay" | "chunk_delay" | "status" | "throttle"
    path_contains: str | None
    times: int | None
    origin: str | None = None
    method: str | None = None
    value: float = 0  # nbytes, offset, seconds, status code or bytes/s depending on kind
    headers: dict[str, str] = field(default_factory=dict)
    skip: int = 0  # matching requests left alone before the rule applies

    def matches(self, origin: str, method: str, subject: str) -> bool:
        return (
            (self.origin is None or self.origin == origin)
            and (self.method is None or self.method.upper() == method)
            and (self.path_contains is None or self.path_contains in subject)
        )


@dataclass
class BodyPlan:
    """What to do to one response body; built once per response so `times` is consumed once."""

    drop_after: int | None = None
    corrupt_offsets: list[int] = field(default_factory=list)
    chunk_delay: float = 0.0
    bytes_per_second: float | None = None


class Faults:
    """Faults apply to the requests they match; `times=None` means forever, else it counts down per use.

    `path_contains` is matched against the decoded request path. For CDN requests the subject also
    contains the `{prefix}{repo}/{path}` names the URL was issued for, so "weights" matches both hops.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[Rule] = []
        self._down = False
        self._url_generation = 0
        self._cas_token_generation = 0

    def _add(self, rule: Rule) -> Rule:
        with self._lock:
            self._rules.append(rule)
        return rule

    def drop_after(
        self,
        nbytes: int,
        path_contains: str | None = None,
        times: int | None = 1,
        *,
        origin: str | None = None,
    ) -> Rule:
        """Send `nbytes` of a body (counted from this response's first byte), then cut the connection."""
        return self._add(Rule("drop", path_contains, times, origin, "GET", nbytes))

    def corrupt(
        self,
        path_contains: str | None = None,
        times: int | None = None,
        offset: int = 0,
        *,
        origin: str | None = None,
        skip: int = 0,
    ) -> Rule:
        """Flip the byte at absolute file `offset` whenever a served range covers it (after `skip`
        matching responses left intact)."""
        return self._add(Rule("corrupt", path_contains, times, origin, "GET", offset, skip=skip))

    def delay(
        self,
        seconds: float,
        path_contains: str | None = None,
        times: int | None = None,
        first_byte: bool = True,
        *,
        origin: str | None = None,
        method: str | None = None,
    ) -> Rule:
        """Sleep before the headers, or (first_byte=False) before every 1 MiB body chunk."""
        kind = "delay" if first_byte else "chunk_delay"
        return self._add(Rule(kind, path_contains, times, origin, method if first_byte else "GET", seconds))

    def status(
        self,
        code: int,
        path_contains: str | None = None,
        times: int | None = 1,
        headers: Mapping[str, str] | None = None,
        *,
        origin: str | None = None,
        method: str | None = None,
    ) -> Rule:
        return self._add(Rule("status", path_contains, times, origin, method, code, dict(headers or {})))

    def throttle(
        self,
        bytes_per_second: float,
        path_contains: str | None = None,
        times: int | None = None,
        *,
        origin: str | None = None,
    ) -> Rule:
        return self._add(Rule("throttle", path_contains, times, origin, "GET", bytes_per_second))

    def down(self) -> None:
        """Close every connection on both origins as soon as a request arrives."""
        self._down = True

    def up(self) -> None:
        self._down = False

    @property
    def is_down(self) -> bool:
        return self._down

    def expire_signed_urls(self) -> None:
        """Invalidate every CDN URL (LFS and Xet xorb URLs alike) issued so far; URLs issued afterwards are valid."""
        with self._lock:
            self._url_generation += 1

    @property
    def url_generation(self) -> int:
        return self._url_generation

    def expire_cas_tokens(self) -> None:
        """Revoke every Xet CAS access token issued so far (the CAS then answers 401); later ones are valid."""
        with self._lock:
            self._cas_token_generation += 1

    @property
    def cas_token_generation(self) -> int:
        return self._cas_token_generation

    def clear(self) -> None:
        """Remove all rules and bring the origins back up (expired URLs stay expired)."""
        with self._lock:
            self._rules.clear()
            self._down = False

    def take(self, kinds: tuple[str, ...], origin: str, method: str, subject: str) -> list[Rule]:
        """Return the matching rules of the given kinds, consuming one use of each."""
        taken: list[Rule] = []
        with self._lock:
            for rule in list(self._rules):
                if rule.kind in kinds and rule.matches(origin, method, subject):
                    if rule.skip > 0:
                        rule.skip -= 1
                        continue
                    taken.append(rule)
                    if rule.times is not None:
                        rule.times -= 1
                        if rule.times <= 0:
                            self._rules.remove(rule)
        return taken

    def take_status(self, origin: str, method: str, subject: str) -> Rule | None:
        """The first matching status rule; only that one is consumed."""
        with self._lock:
            for rule in self._rules:
                if rule.kind == "status" and rule.matches(origin, method, subject):
                    if rule.times is not None:
                        rule.times -= 1
                        if rule.times <= 0:
                            self._rules.remove(rule)
                    return rule
        return None

    def body_plan(self, origin: str, subject: str) -> BodyPlan:
        plan = BodyPlan()
        for rule in self.take(("drop", "corrupt", "chunk_delay", "throttle"), origin, "GET", subject):
            if rule.kind == "drop":
                nbytes = int(rule.value)
                plan.drop_after = nbytes if plan.drop_after is None else min(plan.drop_after, nbytes)
            elif rule.kind == "corrupt":
                plan.corrupt_offsets.append(int(rule.value))
            elif rule.kind == "chunk_delay":
                plan.chunk_delay += rule.value
            else:
                bps = rule.value
                plan.bytes_per_second = bps if plan.bytes_per_second is None else min(plan.bytes_per_second, bps)
        return plan
