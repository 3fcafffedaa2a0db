from __future__ import annotations

import json

import pytest

from service.tools.tail import ForecastView, format_line, format_table, format_ts, parse_forecast


def _message(stream_id: str = "pump-1", warm: bool = True) -> bytes:
    return json.dumps(
        {
            "stream_id": stream_id,
            "ts": 1732262400.0,
            "model": {"name": "sensors-demo", "version": "1"},
            "horizon_ts": [1732262700.0, 1732263000.0, 1732263300.0, 1732263600.0],
            "forecast": {
                "temp": [71.25, 71.5, 71.75, 72.0],
                "vibration": [0.03, 0.031, 0.032, 0.033],
            },
            "warm": warm,
            "partition": 2,
            "offset": 17,
        }
    ).encode()


def test_parse_forecast() -> None:
    view = parse_forecast(_message())
    assert view.stream_id == "pump-1" and view.ts == 1732262400.0
    assert view.model == "sensors-demo:1"
    assert view.step(0) == {"temp": 71.25, "vibration": 0.03}
    assert view.step(3) == {"temp": 72.0, "vibration": 0.033}
    assert (view.partition, view.offset, view.warm) == (2, 17, True)


@pytest.mark.parametrize(
    "raw", [b"not json", b"[]", b'{"stream_id": "x"}', b'{"stream_id": "x", "ts": "soon"}']
)
def test_parse_forecast_rejects_other_records(raw: bytes) -> None:
    with pytest.raises(ValueError, match="not a forecast message"):
        parse_forecast(raw)


def test_format_line_shows_time_stream_state_and_next_steps() -> None:
    line = format_line(parse_forecast(_message(warm=False)), steps=2)
    assert line.startswith("2024-11-22 08:00:00  pump-1")
    assert " cold " in line
    assert "temp: 71.25 71.5 …" in line
    assert "vibration: 0.03 0.031 …" in line
    assert "72" not in line  # only two steps


def test_format_table_lists_latest_per_stream_sorted_and_capped() -> None:
    latest: dict[str, ForecastView] = {
        sid: parse_forecast(_message(sid)) for sid in ("c", "a", "b", "d")
    }
    lines = format_table(latest, rows=3, steps=2)
    assert lines[0].startswith("stream") and "temp +1..+2" in lines[0]
    body = lines[2:]
    assert [line.split()[0] for line in body[:3]] == ["a", "b", "c"]
    assert body[-1] == "… and 1 more streams"
    assert "71.25" in body[0] and "yes" in body[0]
    assert format_table({}, rows=3) == ["(no forecasts yet)"]


def test_format_ts_is_utc() -> None:
    assert format_ts(0.0) == "1970-01-01 00:00:00"
