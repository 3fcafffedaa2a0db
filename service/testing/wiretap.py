"""What Kafka clients ask of a broker: a relay that counts every request by client and API.

- `Wiretap` accepts connections on a loopback port and relays each one to the broker,
  reading the Kafka framing as it goes: a request is a 4-byte size, then ``api_key``
  (int16), ``api_version`` (int16), ``correlation_id`` (int32) and ``client_id`` (int16
  length and bytes); a response is a 4-byte size, then the ``correlation_id`` it answers.
  It counts requests per client role and API and times each one from the moment it was
  relayed to the moment its response came back (the broker's time, with the relay's).
- `TappedBroker` starts the embedded broker advertising the wiretap's port, so that every
  client, after bootstrap too, goes through it.

A client role is the client id with what its connection has been seen doing: ``producer``
(Produce, InitProducerId), ``consumer`` (Fetch, ListOffsets, the group and offset APIs) or
``client`` (metadata only so far). The relay adds a Python hop to every request: count with
it, do not measure latency through it.
"""

from __future__ import annotations

import asyncio
import itertools
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from service.testing.relay import BrokerBehind, Relay, close_quietly

__all__ = ["API_NAMES", "ApiCount", "Exchange", "Tally", "TappedBroker", "Wiretap", "api_name"]

#: The Kafka API keys a Python or librdkafka client sends, by name.
API_NAMES: dict[int, str] = {
    0: "Produce",
    1: "Fetch",
    2: "ListOffsets",
    3: "Metadata",
    8: "OffsetCommit",
    9: "OffsetFetch",
    10: "FindCoordinator",
    11: "JoinGroup",
    12: "Heartbeat",
    13: "LeaveGroup",
    14: "SyncGroup",
    15: "DescribeGroups",
    16: "ListGroups",
    17: "SaslHandshake",
    18: "ApiVersions",
    19: "CreateTopics",
    20: "DeleteTopics",
    22: "InitProducerId",
    32: "DescribeConfigs",
    36: "SaslAuthenticate",
    60: "DescribeCluster",
    71: "GetTelemetrySubscriptions",
}
_PRODUCER_APIS = frozenset({0, 22})
_CONSUMER_APIS = frozenset({1, 2, 8, 9, 10, 11, 12, 13, 14})
_HEADER = struct.Struct(">hhih")
_SIZE = struct.Struct(">i")
_RELAY_CHUNK = 256 * 1024


def api_name(key: int) -> str:
    """The API's name, or ``api<key>`` for one not listed in `API_NAMES`."""
    return API_NAMES.get(key, f"api{key}")


@dataclass
class ApiCount:
    """Requests of one API from one role: how many, and the seconds their responses took."""

    requests: int = 0
    answered: int = 0
    seconds: float = 0.0
    max_seconds: float = 0.0

    def add(self, other: ApiCount) -> None:
        """Fold `other`'s counts into this one."""
        self.requests += other.requests
        self.answered += other.answered
        self.seconds += other.seconds
        self.max_seconds = max(self.max_seconds, other.max_seconds)


@dataclass
class Tally:
    """Counts by (role, API key), over `seconds` of wall time."""

    counts: dict[tuple[str, int], ApiCount] = field(default_factory=dict)
    seconds: float = 0.0

    def rate(self, role: str, api: int) -> float:
        """Requests a second of `api` (a key) from `role`."""
        count = self.counts.get((role, api))
        return count.requests / self.seconds if count is not None and self.seconds else 0.0

    def roles(self) -> list[str]:
        """The roles seen, sorted."""
        return sorted({role for role, _ in self.counts})

    def per_second(self, roles: list[str] | None = None) -> float:
        """Requests a second from `roles` (None: all)."""
        total = sum(c.requests for (r, _), c in self.counts.items() if roles is None or r in roles)
        return total / self.seconds if self.seconds else 0.0


@dataclass(frozen=True, slots=True)
class Exchange:
    """One request and its response, as `Wiretap` traces them (times from `time.monotonic`)."""

    role: str
    api: int
    sent: float
    answered: float
    request_bytes: int
    response_bytes: int


class _Connection:
    """One relayed connection's client id, role and requests awaiting their response."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.client_id = "?"
        self.kind = "client"
        # correlation id, api, sent at, request bytes
        self.waiting: deque[tuple[int, int, float, int]] = deque()

    @property
    def role(self) -> str:
        return f"{self.client_id}/{self.kind}"

    def seen(self, api: int) -> None:
        if api in _PRODUCER_APIS:
            self.kind = "producer"
        elif api in _CONSUMER_APIS and self.kind == "client":
            self.kind = "consumer"


class Wiretap(Relay):
    """Relays Kafka connections to `upstream`, counting requests (see the module docstring).

    Its event loop runs in a thread of its own; `snapshot` and `reset` may be called from
    any thread. `upstream` may be set after `start`: connections that come earlier are closed.
    """

    def __init__(
        self,
        upstream: tuple[str, int] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        trace: bool = False,
    ) -> None:
        """`trace`: also keep every `Exchange` (see `exchanges`)."""
        super().__init__(upstream, host=host, port=port, name="wiretap")
        self._trace: list[Exchange] | None = [] if trace else None
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, int], ApiCount] = {}
        self._since = time.monotonic()
        self._numbers = itertools.count()

    # -- what was counted -------------------------------------------------------------------

    def reset(self) -> None:
        """Forget the counts; the next `snapshot` covers the time from now."""
        with self._lock:
            self._counts = {}
            self._since = time.monotonic()
            if self._trace is not None:
                self._trace = []

    def snapshot(self) -> Tally:
        """The counts since the last `reset` (or `start`), and the seconds they cover."""
        with self._lock:
            counts = {key: _copy(count) for key, count in self._counts.items()}
            return Tally(counts, time.monotonic() - self._since)

    def exchanges(self) -> list[Exchange]:
        """Every request answered since the last `reset`, when tracing (else none)."""
        with self._lock:
            return list(self._trace or [])

    def _count_request(self, role: str, api: int) -> None:
        with self._lock:
            self._counts.setdefault((role, api), ApiCount()).requests += 1

    def _count_answer(self, role: str, api: int, sent: float, size: int, answer: int) -> None:
        now = time.monotonic()
        with self._lock:
            count = self._counts.setdefault((role, api), ApiCount())
            count.answered += 1
            count.seconds += now - sent
            count.max_seconds = max(count.max_seconds, now - sent)
            if self._trace is not None:
                self._trace.append(Exchange(role, api, sent, now, size, answer))

    # -- relaying ---------------------------------------------------------------------------

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
    ) -> None:
        connection = _Connection(next(self._numbers))
        await asyncio.gather(
            self._requests(connection, reader, up_writer),
            self._responses(connection, up_reader, writer),
        )

    async def _requests(
        self, connection: _Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            while True:
                frame = await _frame(reader)
                if frame is None:
                    break
                api, _version, correlation, id_length = _HEADER.unpack_from(frame, 4)
                if id_length >= 0:
                    connection.client_id = frame[14 : 14 + id_length].decode("utf-8", "replace")
                connection.seen(api)
                connection.waiting.append((correlation, api, time.monotonic(), len(frame)))
                self._count_request(connection.role, api)
                writer.write(frame)
                await writer.drain()
        finally:
            close_quietly(writer)

    async def _responses(
        self, connection: _Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            while True:
                frame = await _frame(reader)
                if frame is None:
                    break
                (correlation,) = _SIZE.unpack_from(frame, 4)
                # responses come in request order; a request never answered (acks=0) is
                # passed over when a later one's response arrives
                while connection.waiting:
                    waited, api, sent, size = connection.waiting.popleft()
                    if waited == correlation:
                        self._count_answer(connection.role, api, sent, size, len(frame))
                        break
                writer.write(frame)
                await writer.drain()
        finally:
            close_quietly(writer)


async def _frame(reader: asyncio.StreamReader) -> bytes | None:
    """One size-prefixed Kafka frame, size included; None at the end of the stream."""
    try:
        head = await reader.readexactly(4)
    except asyncio.IncompleteReadError:
        return None
    (size,) = _SIZE.unpack(head)
    return head + await reader.readexactly(size)


def _copy(count: ApiCount) -> ApiCount:
    return ApiCount(count.requests, count.answered, count.seconds, count.max_seconds)


class TappedBroker(BrokerBehind):
    """The embedded broker behind a `Wiretap`, advertising the wiretap's port.

    `bootstrap` is the wiretap's address (every client's requests counted); `pid` the
    broker's process id (for its CPU time).
    """

    def __init__(self, *, log_path: Path | None = None, trace: bool = False) -> None:
        self.wiretap = Wiretap(trace=trace)
        super().__init__(self.wiretap, log_path=log_path)
