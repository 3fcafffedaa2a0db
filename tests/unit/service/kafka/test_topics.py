"""Topic checks and creation against the real broker."""

from __future__ import annotations

import pytest

from service.errors import TopicError
from service.kafka.topics import ensure_topics
from tests.conftest import KafkaKit


def test_creates_input_then_derived_topics_with_the_inputs_partition_count(kafka: KafkaKit) -> None:
    names = [kafka.name(p) for p in ("in", "out", "dlq")]
    counts = ensure_topics(
        kafka.admin,
        input_topic=names[0],
        derived_topics=names[1:],
        create=True,
        partitions=3,
        replication_factor=1,
    )
    assert counts == dict.fromkeys(names, 3)
    assert [len(kafka.partitions(n)) for n in names] == [3, 3, 3]
    # running again changes nothing
    again = ensure_topics(
        kafka.admin,
        input_topic=names[0],
        derived_topics=names[1:],
        create=True,
        partitions=8,
        replication_factor=1,
    )
    assert again == counts


def test_derived_topics_follow_an_existing_input(kafka: KafkaKit) -> None:
    source = kafka.create_topic(kafka.name("in"), 2)
    out = kafka.name("out")
    counts = ensure_topics(
        kafka.admin,
        input_topic=source,
        derived_topics=[out],
        create=True,
        partitions=6,
        replication_factor=1,
    )
    assert counts == {source: 2, out: 2}


def test_missing_topic_without_create_names_it(kafka: KafkaKit) -> None:
    source = kafka.create_topic(kafka.name("in"), 1)
    missing = kafka.name("out")
    with pytest.raises(TopicError, match=missing):
        ensure_topics(
            kafka.admin,
            input_topic=source,
            derived_topics=[missing],
            create=False,
            partitions=1,
            replication_factor=1,
        )
    assert kafka.partitions(missing) == []  # nothing was created
