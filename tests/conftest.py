"""Shared fixtures: one Kafka-compatible broker per test session, fresh names per test.

- `broker`: bootstrap servers. ``KAFKA_BOOTSTRAP_SERVERS`` when set, otherwise an embedded
  broker started once for the session (see service/embedded.py). Tests that use it are
  marked ``broker`` automatically.
- `topic`, `group_id`: a name no other test uses. Producing to a missing topic creates it
  with the broker's default partition count (4 on the embedded broker); create topics
  explicitly with `kafka.create_topic(name, partitions)` when the count matters.
- `kafka`: a `KafkaKit` with helpers to create topics, produce, and read a topic until a
  condition holds (bounded by a timeout), plus the consumer-group settings tests should use.

The embedded broker keeps its data in memory: nothing survives the session. Its ListOffsets
answer for "latest" is the base offset of the last batch plus one, not the end of the log, so
`end_offsets()` and `seek_to_end()` can fall short; a fetch response's high watermark
(`consumer.highwater(tp)`) is right. To check that nothing more was written, produce a marker
after the records and read until it arrives.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import pytest

from service.embedded import broker_bootstrap

#: A consumer group joins in about half its session timeout on the embedded broker; these
#: keep joins and rebalances to a few seconds.
GROUP_SETTINGS: dict[str, Any] = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000}

Record = Any  # kafka.consumer.fetcher.ConsumerRecord


def _unique(prefix: str, test_name: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", test_name).strip("-")[:60]
    return f"{prefix}-{slug}-{uuid.uuid4().hex[:8]}"


class KafkaKit:
    """Helpers bound to one broker and one test; closes its clients at teardown."""

    group_settings = GROUP_SETTINGS

    def __init__(self, bootstrap: str, test_name: str) -> None:
        self.bootstrap = bootstrap
        self._test_name = test_name
        self._admin: Any = None
        self._producer: Any = None

    def name(self, prefix: str = "t") -> str:
        """A fresh topic or group name, unique to this test and call."""
        return _unique(prefix, self._test_name)

    @property
    def admin(self) -> Any:
        if self._admin is None:
            from kafka import KafkaAdminClient

            self._admin = KafkaAdminClient(bootstrap_servers=self.bootstrap)
        return self._admin

    def create_topic(self, name: str | None = None, partitions: int = 1) -> str:
        """Create a topic with `partitions` partitions (a fresh name when none given); return its name."""
        from kafka.admin import NewTopic

        name = name or self.name("t")
        self.admin.create_topics([NewTopic(name, partitions, 1)])
        deadline = time.monotonic() + 10
        while len(self.partitions(name)) < partitions:
            if time.monotonic() > deadline:
                raise TimeoutError(f"topic {name} did not get {partitions} partitions")
            time.sleep(0.05)
        return name

    def partitions(self, topic: str) -> list[int]:
        described = self.admin.describe_topics([topic])
        return sorted(p["partition_index"] for d in described for p in d.get("partitions") or [])

    def produce(
        self,
        topic: str,
        records: Iterable[tuple[bytes | str | None, bytes | str | None]],
        *,
        partition: int | None = None,
    ) -> int:
        """Send (key, value) pairs (str is UTF-8 encoded) and flush; return how many were sent."""
        if self._producer is None:
            from kafka import KafkaProducer

            self._producer = KafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=5)
        n = 0
        for key, value in records:
            self._producer.send(topic, key=_encode(key), value=_encode(value), partition=partition)
            n += 1
        self._producer.flush()
        return n

    def consume_until(
        self,
        topic: str,
        until: Callable[[Sequence[Record]], bool] | int,
        *,
        timeout: float = 20.0,
        partitions: Sequence[int] | None = None,
    ) -> list[Record]:
        """Read `topic` from the beginning (no consumer group) until `until(records)` holds.

        `until` may be a count: stop once that many records were read. Raises
        `TimeoutError` with what was read when the condition does not hold in time.
        """
        from kafka import KafkaConsumer, TopicPartition

        done = (lambda rs: len(rs) >= until) if isinstance(until, int) else until
        consumer = KafkaConsumer(
            bootstrap_servers=self.bootstrap, enable_auto_commit=False, group_id=None
        )
        records: list[Record] = []
        try:
            deadline = time.monotonic() + timeout
            parts = list(partitions) if partitions is not None else []
            while not parts:
                parts = sorted(consumer.partitions_for_topic(topic) or [])
                if not parts and time.monotonic() > deadline:
                    raise TimeoutError(f"topic {topic} does not exist")
                if not parts:
                    time.sleep(0.05)
            tps = [TopicPartition(topic, p) for p in parts]
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            while not done(records):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"condition not met on {topic} after {timeout:.0f} s; "
                        f"read {len(records)} records"
                    )
                batch = consumer.poll(timeout_ms=int(min(left, 0.5) * 1000))
                for tp in sorted(batch, key=lambda t: t.partition):
                    records.extend(batch[tp])
            return records
        finally:
            consumer.close()

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close()
            self._producer = None
        if self._admin is not None:
            self._admin.close()
            self._admin = None


def _encode(value: bytes | str | None) -> bytes | None:
    return value.encode() if isinstance(value, str) else value


@pytest.fixture(scope="session")
def broker() -> Iterator[str]:
    """Bootstrap servers of the session's broker."""
    with broker_bootstrap() as bootstrap:
        yield bootstrap


@pytest.fixture
def kafka(broker: str, request: pytest.FixtureRequest) -> Iterator[KafkaKit]:
    kit = KafkaKit(broker, request.node.name)
    yield kit
    kit.close()


@pytest.fixture
def topic(request: pytest.FixtureRequest) -> str:
    """A topic name no other test uses."""
    return _unique("t", request.node.name)


@pytest.fixture
def group_id(request: pytest.FixtureRequest) -> str:
    """A consumer group id no other test uses."""
    return _unique("g", request.node.name)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "broker" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.broker)
