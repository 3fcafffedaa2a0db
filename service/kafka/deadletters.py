"""What a sink does when the broker refuses a dead letter for good.

A dead letter is already cut to ``kafka.dead_letter_max_bytes`` before it is sent (see
`service.kafka.codec.fit_dead_letter`); a broker whose limit is lower still, or that refuses
the record for another reason that sending it again cannot mend, would otherwise fail every
checkpoint from then on and stop the service on the same record after each restart. Both
sinks send such a dead letter again in a smaller form (`shrink_dead_letter`: a sixteenth of
its value, then none), and give it up once nothing is left to cut. Each step is an event the
service counts and logs (`Sink.take_dead_letter_events`); a refusal that may pass (a broker
unreachable, a leader moving) is not one of them: those records are sent again as before.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Literal

from service.config import KafkaSettings
from service.kafka.codec import DeadLetter, shrink_dead_letter

__all__ = ["DeadLetterEvent", "DeadLetterEvents", "max_request_bytes"]

_Headers = list[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class DeadLetterEvent:
    """A dead letter the broker refused for good: sent again smaller (``shrunk``), or given
    up (``lost``). `headers` are the dead letter's (reason and source position)."""

    outcome: Literal["shrunk", "lost"]
    headers: _Headers
    error: str


class DeadLetterEvents:
    """The refusals a sink met, kept until the service takes them (any thread may add)."""

    def __init__(self) -> None:
        self._events: deque[DeadLetterEvent] = deque()

    def refused(
        self, key: bytes | None, value: bytes | None, headers: _Headers | None, error: str
    ) -> DeadLetter | None:
        """The form to send a refused dead letter in next, or None when it is given up."""
        smaller = shrink_dead_letter(DeadLetter(key, value, list(headers or [])))
        outcome: Literal["shrunk", "lost"] = "lost" if smaller is None else "shrunk"
        self._events.append(DeadLetterEvent(outcome, list(headers or []), error))
        return smaller

    def take(self) -> list[DeadLetterEvent]:
        """The events since the last call, oldest first."""
        taken: list[DeadLetterEvent] = []
        while self._events:
            taken.append(self._events.popleft())
        return taken


def max_request_bytes(settings: KafkaSettings) -> int:
    """The forecast and dead-letter producer's largest request: room for the largest dead
    letter (``kafka.dead_letter_max_bytes``) and its headers, and never below 1 MiB."""
    return max(1 << 20, 2 * settings.max_message_bytes, settings.dead_letter_max_bytes + (64 << 10))
