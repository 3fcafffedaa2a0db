from __future__ import annotations

from pathlib import Path

import pytest

from service.cli import build_parser, main


def test_subcommands_are_registered_with_their_options() -> None:
    parser = build_parser()
    args = parser.parse_args(
        ["replay", "data.csv", "--rate", "50", "--topic", "t", "--start-ts", "now"]
    )
    assert (args.source, args.rate, args.topic, args.start_ts) == ("data.csv", 50.0, "t", "now")
    args = parser.parse_args(
        ["tail", "--from-beginning", "--max", "5", "--stream", "a", "--stream", "b"]
    )
    assert args.from_beginning and args.max == 5 and args.stream == ["a", "b"]
    args = parser.parse_args(["demo", "--duration", "10", "--streams", "20", "--http-port", "0"])
    assert (args.duration, args.streams, args.http_port, args.model) == (
        10.0,
        20,
        0,
        "sensors-demo",
    )


def test_replay_of_a_bad_file_ends_with_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("stream_id,ts,temp\na,1,hot\n")
    assert main(["replay", str(bad), "--bootstrap-servers", "127.0.0.1:1", "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"sensorcast: error: {bad}: column 'temp' is not numeric")


def test_a_non_positive_rate_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["replay", "--rate", "0"])
    assert info.value.code == 2
    assert "must be positive" in capsys.readouterr().err
