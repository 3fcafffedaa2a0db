"""Drop lines are rate-limited per reason and count every drop between them."""

from __future__ import annotations

import logging

import pytest

from service.core.readings import DropReason
from service.droplog import DropLog


def test_one_line_per_reason_per_interval_counting_the_drops_between(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    drops = DropLog(10.0, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="service.drops"):
        assert drops.due(DropReason.LATE, 3)
        drops.log(DropReason.LATE, "pump-1", 2, 40, "ts before the stream's last")
        assert drops.due(DropReason.DUPLICATE)  # each reason has its own interval
        drops.log(DropReason.DUPLICATE, "pump-2", 0, 7, "same ts")
        now[0] = 5.0
        assert not drops.due(DropReason.LATE, 1000)
        now[0] = 10.0
        assert drops.due(DropReason.LATE, 2)
        drops.log(DropReason.LATE, "pump-3", 1, 90, "ts before the stream's last")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3
    assert "stream=pump-1" in lines[0] and "dropped_since_last_line=3" in lines[0]
    assert "reason=duplicate" in lines[1]
    assert "stream=pump-3" in lines[2] and "dropped_since_last_line=1002" in lines[2]
    assert all(r.levelno == logging.WARNING for r in caplog.records)
