"""Single byte ranges as HF clients, curl and aria2c send them (RFC 9110 section 14)."""

from __future__ import annotations

import pytest

from mirror.errors import RangeNotSatisfiable
from mirror.hub.ranges import parse_range

SIZE = 1000


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=0-99", (0, 100)),
        ("bytes=0-0", (0, 1)),
        ("bytes=500-999", (500, 1000)),
        ("bytes=999-999", (999, 1000)),
        ("bytes=100-", (100, 1000)),
        ("bytes=0-", (0, 1000)),
        ("bytes=999-", (999, 1000)),
        ("bytes=-1", (999, 1000)),
        ("bytes=-100", (900, 1000)),
        ("bytes=-1000", (0, 1000)),
        ("bytes=-5000", (0, 1000)),  # suffix longer than the file: the whole file
        ("bytes=900-5000", (900, 1000)),  # end past EOF is clamped
        ("bytes=0-99999999999999999999", (0, 1000)),
        ("Bytes=1-2", (1, 3)),  # range units are case-insensitive
        ("bytes=1-2 ", (1, 3)),
    ],
)
def test_satisfiable_ranges(header: str, expected: tuple[int, int]) -> None:
    assert parse_range(header, SIZE) == expected


def test_single_byte_file() -> None:
    assert parse_range("bytes=0-", 1) == (0, 1)
    assert parse_range("bytes=-10", 1) == (0, 1)
    assert parse_range("bytes=0-10", 1) == (0, 1)


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=1000-1000", "bytes=1500-2000", "bytes=-0"])
def test_unsatisfiable_ranges(header: str) -> None:
    with pytest.raises(RangeNotSatisfiable) as err:
        parse_range(header, SIZE)
    assert err.value.status == 416
    assert err.value.headers == {"Content-Range": f"bytes */{SIZE}"}


@pytest.mark.parametrize("header", ["bytes=0-", "bytes=0-0", "bytes=0-100", "bytes=5-", "bytes=-1", "bytes=-100"])
def test_any_range_of_an_empty_file_is_unsatisfiable(header: str) -> None:
    with pytest.raises(RangeNotSatisfiable) as err:
        parse_range(header, 0)
    assert err.value.headers["Content-Range"] == "bytes */0"


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "bytes",
        "bytes=",
        "bytes=-",
        "bytes=5",
        "bytes=abc",
        "bytes=a-b",
        "bytes=1-x",
        "bytes=0x10-",
        "bytes=--5",
        "bytes=-5-",
        "bytes=1-2-3",
        "bytes=5-3",  # last before first is invalid, not empty
        "bytes=-1-5",
        "items=0-10",
        "0-10",
        "bytes 0-10",
        "bytes=0-1,5-6",  # multi-range is not supported: send the whole body
        "bytes=0-1, 5-6",
        "bytes=-5,0-1",
        "bytes=0-1,",
    ],
)
def test_malformed_or_multi_range_means_whole_body(header: str | None) -> None:
    assert parse_range(header, SIZE) is None


def test_malformed_range_of_an_empty_file_means_whole_body() -> None:
    assert parse_range("bytes=0-1,2-3", 0) is None
    assert parse_range("bytes=x-", 0) is None


@pytest.mark.parametrize("header", ["bytes=1_0-20", "bytes=+1-2", "bytes=0-+2", "bytes=-+5", "bytes=\u0663-5"])
def test_non_digit_numbers_are_malformed(header: str) -> None:
    assert parse_range(header, SIZE) is None
