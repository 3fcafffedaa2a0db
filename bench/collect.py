"""A `ForecastCollector` in a process of its own, so that what it notes is not delayed by
the bench's other threads (the load generator, the other consumer) holding the GIL.

    python -m bench.collect BOOTSTRAP TOPIC OUT    # prints "ready"; on end of stdin writes OUT

`CollectorProcess` starts one and has the collector's interface: `close()` returns
(stream id, reading ts, arrival time) of every record it consumed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench.e2e import ForecastCollector
from service.embedded import die_with_parent

__all__ = ["CollectorProcess", "main"]

_ROOT = Path(__file__).resolve().parents[1]


class CollectorProcess:
    """`ForecastCollector(bootstrap, topic)` run by ``python -m bench.collect``."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        fd, name = tempfile.mkstemp(prefix="collect-", suffix=".json")
        os.close(fd)
        self._path = Path(name)
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "bench.collect", bootstrap, topic, name],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=_ROOT,
            preexec_fn=die_with_parent,
        )
        assert self._proc.stdout is not None
        if self._proc.stdout.readline().strip() != "ready":
            self._proc.kill()
            raise RuntimeError(f"the collector of {topic} did not start")

    @property
    def pid(self) -> int:
        return self._proc.pid

    def close(self) -> list[tuple[str, float, float]]:
        assert self._proc.stdin is not None
        self._proc.stdin.close()
        if self._proc.wait(120) != 0:
            raise RuntimeError(f"the collector exited with {self._proc.returncode}")
        try:
            rows = json.loads(self._path.read_text())
        finally:
            self._path.unlink(missing_ok=True)
        return [(str(s), float(ts), float(got)) for s, ts, got in rows]


def main(argv: Sequence[str] | None = None) -> int:
    bootstrap, topic, out = argv if argv is not None else sys.argv[1:]
    collector = ForecastCollector(bootstrap, topic)
    print("ready", flush=True)
    sys.stdin.read()
    Path(out).write_text(json.dumps(collector.close()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
