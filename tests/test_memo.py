"""The in-memory caches: `Aging` (answers trusted for a TTL, kept past it as the last known)."""

from __future__ import annotations

from mirror.cache.memo import Aging, Hit


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_fresh_within_ttl_then_known_only() -> None:
    clock = Clock()
    aging: Aging[str, str] = Aging(10, clock)
    aging.put("main", "abc", ttl=30)

    clock.now += 29.9
    assert aging.fresh("main") == "abc"
    assert aging.known("main") == "abc"
    assert aging.get("main") == Hit("abc", fresh=True)

    clock.now += 0.1  # exactly at the end of its time: no longer trusted
    assert aging.fresh("main") is None
    assert aging.known("main") == "abc"  # expired answers are kept as the last known
    assert aging.get("main") == Hit("abc", fresh=False)
    assert "main" in aging


def test_put_again_trusts_anew() -> None:
    clock = Clock()
    aging: Aging[str, str] = Aging(10, clock)
    aging.put("main", "old", ttl=5)
    clock.now += 10
    assert aging.fresh("main") is None
    aging.put("main", "new", ttl=5)
    assert aging.fresh("main") == "new"
    clock.now += 5
    assert aging.fresh("main") is None
    assert aging.known("main") == "new"


def test_put_stale_is_known_but_due_for_refresh() -> None:
    # Fake clocks may start at 0 or below; an answer read back from storage is never fresh.
    for start in (-100.0, 0.0, 1e9):
        clock = Clock(start)
        aging: Aging[str, str] = Aging(10, clock)
        aging.put_stale("main", "abc")
        assert aging.fresh("main") is None
        assert aging.known("main") == "abc"
        assert aging.get("main") == Hit("abc", fresh=False)


def test_absent_is_not_known_none() -> None:
    clock = Clock()
    aging: Aging[str, str | None] = Aging(10, clock)
    assert aging.get("missing") is None
    assert "missing" not in aging

    aging.put("allowed", None, ttl=10)  # e.g. an access decision "allowed", or "no pin"
    hit = aging.get("allowed")
    assert hit is not None and hit.value is None and hit.fresh
    assert "allowed" in aging

    clock.now += 10
    hit = aging.get("allowed")
    assert hit is not None and hit.value is None and not hit.fresh

    aging.put_stale("stale-none", None)
    assert aging.get("stale-none") == Hit(None, fresh=False)


def test_bounded_least_recently_used_drop_out() -> None:
    clock = Clock()
    aging: Aging[int, str] = Aging(3, clock)
    assert aging.maxsize == 3
    for key in range(3):
        aging.put(key, f"v{key}", ttl=60)
    assert aging.known(0) == "v0"  # 0 is now the most recently used; 1 the least
    aging.put(3, "v3", ttl=60)
    assert len(aging) == 3
    assert aging.get(1) is None
    assert [aging.known(k) for k in (0, 2, 3)] == ["v0", "v2", "v3"]

    # Stale entries count towards the bound and are evicted the same way.
    aging.put_stale(4, "v4")
    assert len(aging) == 3
    assert aging.get(0) is None
    assert aging.known(4) == "v4"


def test_expired_entries_stay_until_evicted() -> None:
    # Expiry never drops an answer: only the bound does (the last known answer must survive outages).
    clock = Clock()
    aging: Aging[int, str] = Aging(2, clock)
    aging.put(1, "a", ttl=1)
    clock.now += 3600
    assert aging.known(1) == "a"
    aging.put(2, "b", ttl=1)
    assert aging.known(1) == "a" and aging.known(2) == "b"


def test_forget_drops_what_the_predicate_selects() -> None:
    clock = Clock()
    aging: Aging[tuple[str, str], str] = Aging(10, clock)
    aging.put(("org/a", "main"), "1", ttl=60)
    aging.put_stale(("org/a", "v1"), "2")
    aging.put(("org/b", "main"), "3", ttl=60)

    aging.forget(lambda key: key[0] == "org/a")

    assert aging.get(("org/a", "main")) is None
    assert aging.get(("org/a", "v1")) is None
    assert aging.get(("org/b", "main")) == Hit("3", fresh=True)
    assert len(aging) == 1

    aging.forget(lambda key: False)
    assert len(aging) == 1
