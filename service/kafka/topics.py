"""Topic checks and creation at start-up.

The input topic is created with ``kafka.partitions`` partitions when missing (and allowed);
derived topics (forecasts, dead letters, the state changelog) are created with the input's
partition count, so a stream keeps the same partition number end to end. The changelog must
have exactly the input's count (its partition p holds the states of input partition p) and is
created compacted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import NotRequired, TypedDict, Unpack

from kafka import KafkaAdminClient
from kafka.errors import KafkaError, TopicAlreadyExistsError

from service.config import KafkaSettings, changelog_topic
from service.errors import TopicError

__all__ = ["TopicPlan", "ensure_topics", "ensure_with", "partition_counts", "topic_plan"]

log = logging.getLogger(__name__)

_UNKNOWN_TOPIC = 3


class TopicPlan(TypedDict):
    """The topics `ensure_topics` checks, and how it creates those that are missing.

    `topic_configs` gives the configs of topics to create (e.g. ``cleanup.policy``).
    """

    input_topic: str
    derived_topics: Sequence[str]
    create: bool
    partitions: int
    replication_factor: int
    topic_configs: NotRequired[Mapping[str, Mapping[str, str]] | None]


def topic_plan(settings: KafkaSettings, derived: Sequence[str]) -> TopicPlan:
    """The service's topics: the input, `derived` (output, dead letters, changelog), created
    as the settings say, the changelog compacted."""
    return TopicPlan(
        input_topic=settings.input_topic,
        derived_topics=derived,
        create=settings.create_topics,
        partitions=settings.partitions,
        replication_factor=settings.replication_factor,
        topic_configs={changelog_topic(settings): {"cleanup.policy": "compact"}},
    )


def partition_counts(admin: KafkaAdminClient, topics: Sequence[str]) -> dict[str, int]:
    """Partition count of each topic in `topics` that exists."""
    found: dict[str, int] = {}
    for entry in admin.describe_topics(list(topics)):
        if entry["error_code"] == _UNKNOWN_TOPIC:
            continue
        if entry["error_code"] != 0:
            raise TopicError(
                f"topic {entry['name']!r}: the broker reports error code {entry['error_code']}"
            )
        found[entry["name"]] = len(entry["partitions"])
    return found


def _create(
    admin: KafkaAdminClient,
    topic: str,
    partitions: int,
    replication_factor: int,
    configs: Mapping[str, str] | None = None,
) -> None:
    spec: dict[str, object] = {
        "num_partitions": partitions,
        "replication_factor": replication_factor,
    }
    if configs:
        spec["configs"] = dict(configs)
    try:
        admin.create_topics({topic: spec}, wait_for_metadata=True)
    except TopicAlreadyExistsError:
        return  # another member created it first
    except KafkaError as exc:
        raise TopicError(f"cannot create topic {topic!r}: {exc}") from exc
    log.info(
        "topic created topic=%s partitions=%d replication=%d", topic, partitions, replication_factor
    )


def ensure_topics(admin: KafkaAdminClient, **plan: Unpack[TopicPlan]) -> dict[str, int]:
    """Check (and, when `create`, make) the input and derived topics; return each one's
    partition count. A missing topic that may not be created raises `TopicError` naming it."""
    return ensure_with(
        lambda topics: partition_counts(admin, topics),
        lambda topic, n, rf, configs: _create(admin, topic, n, rf, configs),
        **plan,
    )


def ensure_with(
    counts: Callable[[Sequence[str]], dict[str, int]],
    make: Callable[[str, int, int, Mapping[str, str] | None], None],
    **plan: Unpack[TopicPlan],
) -> dict[str, int]:
    """`ensure_topics` on any client: `counts(topics)` gives the partition count of each topic
    that exists, `make(topic, partitions, replication_factor, configs)` creates one (quietly
    when another member created it first)."""
    input_topic, derived_topics = plan["input_topic"], plan["derived_topics"]
    replication_factor = plan["replication_factor"]
    topic_configs = plan.get("topic_configs") or {}
    wanted = [input_topic, *derived_topics]
    existing = counts(wanted)
    missing = [t for t in wanted if t not in existing]
    if missing and not plan["create"]:
        raise TopicError(
            f"topic {missing[0]!r} does not exist and kafka.create_topics is false"
            + (f" (also missing: {', '.join(missing[1:])})" if missing[1:] else "")
        )
    if input_topic not in existing:
        make(input_topic, plan["partitions"], replication_factor, None)
        existing[input_topic] = counts([input_topic]).get(input_topic, plan["partitions"])
    n_input = existing[input_topic]
    for topic in derived_topics:
        if topic not in existing:
            make(topic, n_input, replication_factor, topic_configs.get(topic))
            existing[topic] = n_input
    return existing
