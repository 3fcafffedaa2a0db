"""Dead letters: a record the service could not use, sent on with why and where it came from.

A dead letter keeps the original key and value and adds headers: the reason and its detail,
and the source topic, partition and offset. One too large for the broker is cut to its
first bytes (`fit_dead_letter`), and one the broker refuses all the same is sent again
smaller (`shrink_dead_letter`); a cut one says so in two more headers.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "HEADER_DETAIL",
    "HEADER_REASON",
    "HEADER_SOURCE_BYTES",
    "HEADER_SOURCE_OFFSET",
    "HEADER_SOURCE_PARTITION",
    "HEADER_SOURCE_TOPIC",
    "HEADER_TRUNCATED",
    "MAX_DETAIL",
    "DeadLetter",
    "clip_detail",
    "dead_letter_headers",
    "fit_dead_letter",
    "shrink_dead_letter",
]

HEADER_REASON = "sensorcast.error.reason"
HEADER_DETAIL = "sensorcast.error.detail"
HEADER_SOURCE_TOPIC = "sensorcast.source.topic"
HEADER_SOURCE_PARTITION = "sensorcast.source.partition"
HEADER_SOURCE_OFFSET = "sensorcast.source.offset"
HEADER_TRUNCATED = "sensorcast.dead_letter.truncated"
HEADER_SOURCE_BYTES = "sensorcast.source.bytes"

#: Longest detail a reject (and so a dead letter's detail header) carries, in characters.
MAX_DETAIL = 500

# A dead letter's key keeps at most this many bytes once the record has to be cut.
_CUT_KEY_BYTES = 1024
# A dead letter the broker refused is sent again with 1/16 of its value, then with none.
_SHRINK = 16
_SHRINK_FLOOR = 1024


def clip_detail(text: str) -> str:
    """`text` cut to `MAX_DETAIL` characters, ending in ``...`` when it was cut."""
    return text if len(text) <= MAX_DETAIL else text[: MAX_DETAIL - 3] + "..."


def dead_letter_headers(
    reason: str, detail: str, topic: str, partition: int, offset: int
) -> list[tuple[str, bytes]]:
    """Headers of a dead-letter record: the error, and where the original record was."""
    return [
        (HEADER_REASON, reason.encode()),
        (HEADER_DETAIL, clip_detail(detail).encode("utf-8", "replace")),
        (HEADER_SOURCE_TOPIC, topic.encode()),
        (HEADER_SOURCE_PARTITION, str(partition).encode()),
        (HEADER_SOURCE_OFFSET, str(offset).encode()),
    ]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A dead-letter record as it is sent: the original key and value, or their first bytes
    when the whole record does not fit (`truncated`)."""

    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    truncated: bool = False

    @property
    def size(self) -> int:
        """Bytes of key, value and headers: what counts against a broker's message size."""
        return (
            len(self.key or b"")
            + len(self.value or b"")
            + sum(len(name) + len(value) for name, value in self.headers)
        )


def fit_dead_letter(
    key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]], max_bytes: int
) -> DeadLetter:
    """The dead letter of a record whose key and value take `key` and `value`: whole when it
    fits in `max_bytes`, else cut to its first bytes, with the headers
    ``sensorcast.dead_letter.truncated`` (``true``) and ``sensorcast.source.bytes`` (the
    original key and value bytes) added."""
    whole = DeadLetter(key, value, headers)
    if whole.size <= max_bytes:
        return whole
    return _cut(key, value, headers, max_bytes)


def shrink_dead_letter(letter: DeadLetter) -> DeadLetter | None:
    """The next smaller form of a dead letter the broker refused as too large (or refused for
    any reason that sending it again cannot mend): a sixteenth of its value, then no value
    at all (the headers still say what it was and where it came from); None once there is
    nothing left to cut."""
    value = letter.value or b""
    if len(value) > _SHRINK_FLOOR:
        keep = len(value) // _SHRINK
    elif value or len(letter.key or b"") > _CUT_KEY_BYTES:
        keep = 0
    else:
        return None
    original = _source_bytes(letter)
    headers = [h for h in letter.headers if h[0] not in (HEADER_TRUNCATED, HEADER_SOURCE_BYTES)]
    key = letter.key if letter.key is None else letter.key[:_CUT_KEY_BYTES]
    return DeadLetter(
        key,
        value[:keep],
        [*headers, (HEADER_TRUNCATED, b"true"), (HEADER_SOURCE_BYTES, str(original).encode())],
        truncated=True,
    )


def _source_bytes(letter: DeadLetter) -> int:
    for name, value in letter.headers:
        if name == HEADER_SOURCE_BYTES:
            return int(value)
    return len(letter.key or b"") + len(letter.value or b"")


def _cut(
    key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]], max_bytes: int
) -> DeadLetter:
    original = len(key or b"") + len(value or b"")
    marks = [(HEADER_TRUNCATED, b"true"), (HEADER_SOURCE_BYTES, str(original).encode())]
    headers = [*headers, *marks]
    room = max_bytes - DeadLetter(None, None, headers).size
    if key is not None and len(key) > min(_CUT_KEY_BYTES, room):
        key = key[: max(0, min(_CUT_KEY_BYTES, room))]
    room -= len(key or b"")
    value = (value or b"")[: max(0, room)]
    return DeadLetter(key, value, headers, truncated=True)
