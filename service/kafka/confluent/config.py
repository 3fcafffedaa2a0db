"""librdkafka settings shared by the confluent-kafka clients, and its errors as ours."""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import KafkaError, KafkaException

from service.config import KafkaSettings
from service.kafka.security import librdkafka_options

__all__ = ["GROUP_CHURN", "base_config", "describe", "error_of"]

log = logging.getLogger(__name__)
#: librdkafka's own log lines (connection failures and the like), as operator logs.
librdkafka_log = logging.getLogger("service.kafka.confluent.librdkafka")

#: Commit errors that mean "the group is changing", not "the broker is unreachable".
GROUP_CHURN = frozenset(
    {
        KafkaError.REBALANCE_IN_PROGRESS,
        KafkaError.ILLEGAL_GENERATION,
        KafkaError.UNKNOWN_MEMBER_ID,
        KafkaError.FENCED_INSTANCE_ID,
        KafkaError._ASSIGNMENT_LOST,
        KafkaError._MAX_POLL_EXCEEDED,
        KafkaError._STATE,
    }
)


def _on_error(err: KafkaError) -> None:
    # Client-wide errors (a connection refused, all brokers down), which librdkafka retries:
    # the service's own lines report what they cost (a failed checkpoint, not ready).
    if err.fatal():
        log.error("kafka client failed code=%s error=%s", err.name(), err.str())
    elif err.code() == KafkaError._ALL_BROKERS_DOWN:
        log.warning("kafka client reaches no broker error=%s", err.str())
    else:
        log.debug("kafka client error code=%s error=%s", err.name(), err.str())


def base_config(settings: KafkaSettings, client_id: str) -> dict[str, Any]:
    """Bootstrap, client id, reconnect backoff, TLS and SASL, logs and client-wide errors."""
    return {
        "bootstrap.servers": settings.bootstrap_servers,
        "client.id": client_id,
        "reconnect.backoff.max.ms": int(settings.reconnect_backoff_max * 1000),
        "logger": librdkafka_log,
        "error_cb": _on_error,
        **librdkafka_options(settings),
    }


def error_of(exc: BaseException) -> KafkaError | None:
    """The librdkafka error a `KafkaException` carries."""
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return exc.args[0]
    return None


def describe(exc: BaseException) -> str:
    """``NAME: message`` of the librdkafka error `exc` carries, else its repr (for logs and
    our errors' messages)."""
    err = error_of(exc)
    return f"{err.name()}: {err.str()}" if err is not None else repr(exc)
