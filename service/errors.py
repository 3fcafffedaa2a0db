"""One root for every error Sensorcast raises; library errors are converted at the edge."""

from __future__ import annotations

__all__ = [
    "BrokerError",
    "ChangelogError",
    "CheckpointError",
    "ConfigError",
    "DataSourceError",
    "GroupChangingError",
    "InferenceError",
    "ModelCardError",
    "ModelContractError",
    "RegistryError",
    "SensorcastError",
    "SinkError",
    "StateError",
    "TopicError",
    "TransportError",
]


class SensorcastError(Exception):
    """Root of every error raised by Sensorcast."""


class ModelCardError(SensorcastError):
    """A model card is missing, unreadable or invalid."""


class ModelContractError(SensorcastError):
    """An ONNX graph does not honour the step-model contract described by its card.

    Re-export the model with `sensorcast export`, or fix the card so that its features,
    targets, horizon and states match the graph's inputs and outputs.
    """


class RegistryError(SensorcastError):
    """A model or version is not in the registry.

    Check `--registry` (or SENSORCAST_MODEL__REGISTRY) and run `sensorcast models` to list
    what is there.
    """


class ConfigError(SensorcastError):
    """A setting is invalid; the message names it and says what is accepted."""


class BrokerError(SensorcastError):
    """The embedded broker could not be started.

    The message ends with the broker's log. Install the ``dev`` extra (it ships the
    broker), or set KAFKA_BOOTSTRAP_SERVERS to use an existing Kafka broker instead.
    """


class StateError(SensorcastError):
    """Stream state cannot be stored or restored (a malformed or incompatible state record).

    A changelog written by a model with different state shapes cannot be restored: serve the
    model that wrote it, or start from an empty changelog topic.
    """


class InferenceError(SensorcastError):
    """The step model failed while running a batch."""


class TopicError(SensorcastError):
    """A Kafka topic the service needs is missing or unusable.

    Create the topic (or set SENSORCAST_KAFKA__CREATE_TOPICS=true to let the service create
    it), or point the service at the right one with SENSORCAST_KAFKA__INPUT_TOPIC,
    SENSORCAST_KAFKA__OUTPUT_TOPIC or SENSORCAST_KAFKA__DEAD_LETTER_TOPIC.
    """


class TransportError(SensorcastError):
    """A Kafka client call failed: the broker is unreachable or refused it.

    Raised by either Kafka client (kafka-python or confluent-kafka) in place of its own
    errors; the service retries with backoff and reports not-ready meanwhile.
    """


class GroupChangingError(TransportError):
    """An offset commit was refused because the consumer group is rebalancing."""


class SinkError(SensorcastError):
    """Records could not be delivered to the broker in time; offsets were not committed."""


class DataSourceError(SensorcastError):
    """A file or built-in dataset to replay cannot be read; the message names the file and column."""


class ChangelogError(SensorcastError):
    """The state changelog could not be written or read to its end in time.

    A failed write fails the checkpoint (offsets stay uncommitted and it is retried); a failed
    restore keeps the partitions paused and is retried. If it persists, check that the broker
    is reachable and that the changelog topic exists with the input's partition count.
    """


class CheckpointError(SensorcastError):
    """A checkpoint did not complete: nothing was committed past what is durable.

    The service pauses consumption, reports not-ready and retries after `retry_in` seconds;
    the cause (a `SinkError`, `ChangelogError` or `TransportError`) is chained.
    """

    def __init__(self, message: str, *, retry_in: float) -> None:
        super().__init__(message)
        self.retry_in = retry_in
