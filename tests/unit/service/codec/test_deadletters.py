"""Dead letters: the headers that say why and where from; a record too large for the broker
cut to its first bytes, and one refused all the same sent smaller until nothing is left."""

from __future__ import annotations

import pytest

from service.codec import (
    HEADER_DETAIL,
    HEADER_REASON,
    HEADER_SOURCE_BYTES,
    HEADER_SOURCE_OFFSET,
    HEADER_SOURCE_PARTITION,
    HEADER_SOURCE_TOPIC,
    HEADER_TRUNCATED,
    DeadLetter,
    dead_letter_headers,
    fit_dead_letter,
    shrink_dead_letter,
)


def test_dead_letter_headers() -> None:
    headers = dict(dead_letter_headers("not_json", "x" * 2000, "sensor-readings", 3, 99))
    assert headers[HEADER_REASON] == b"not_json"
    assert headers[HEADER_SOURCE_TOPIC] == b"sensor-readings"
    assert headers[HEADER_SOURCE_PARTITION] == b"3"
    assert headers[HEADER_SOURCE_OFFSET] == b"99"
    assert 0 < len(headers[HEADER_DETAIL]) <= 500


HEADERS = dead_letter_headers("oversized", "too big", "sensor-readings", 3, 81)


def test_a_dead_letter_that_fits_is_the_record_itself() -> None:
    letter = fit_dead_letter(b"pump-1", b"x" * 1000, HEADERS, 4096)
    assert (letter.key, letter.value, letter.headers, letter.truncated) == (
        b"pump-1",
        b"x" * 1000,
        HEADERS,
        False,
    )


@pytest.mark.parametrize("size", [4097, 1_100_000, 5_000_000])
def test_a_dead_letter_too_large_is_cut_to_its_first_bytes_and_says_so(size: int) -> None:
    value = bytes(range(256)) * (size // 256 + 1)
    letter = fit_dead_letter(b"pump-1", value[:size], HEADERS, 4096)
    assert letter.truncated and letter.size <= 4096
    assert letter.key == b"pump-1"
    assert letter.value == value[: len(letter.value or b"")] and len(letter.value or b"") > 3000
    headers = dict(letter.headers)
    assert headers[HEADER_TRUNCATED] == b"true"
    assert int(headers[HEADER_SOURCE_BYTES]) == size + len(b"pump-1")
    assert headers[HEADER_REASON] == b"oversized"  # the original headers are all kept
    assert headers[HEADER_SOURCE_OFFSET] == b"81"


def test_a_huge_key_is_cut_too() -> None:
    letter = fit_dead_letter(b"k" * 3_000_000, b"{}", HEADERS, 8192)
    assert letter.truncated and letter.size <= 8192
    assert letter.key is not None and len(letter.key) <= 1024


def test_a_refused_dead_letter_shrinks_to_nothing_and_then_gives_up() -> None:
    letter: DeadLetter | None = fit_dead_letter(b"pump-1", b"v" * 200_000, HEADERS, 262_144)
    sizes = []
    while letter is not None:
        sizes.append(len(letter.value or b""))
        letter = shrink_dead_letter(letter)
    assert sizes[0] == 200_000 and sizes[-1] == 0
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == len(sizes)
    last = fit_dead_letter(b"pump-1", b"v" * 200_000, HEADERS, 262_144)
    while (smaller := shrink_dead_letter(last)) is not None:
        last = smaller
    headers = dict(last.headers)
    assert int(headers[HEADER_SOURCE_BYTES]) == 200_000 + 6  # the original size survives
    assert headers[HEADER_REASON] == b"oversized"
