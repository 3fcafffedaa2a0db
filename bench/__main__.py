"""Run every benchmark module in this package: ``python -m bench [--quick]``.

Each module ``bench/<name>.py`` with a ``main(argv) -> int`` function is a benchmark; they run
one after another (the machine's cores are theirs alone while they run), with the same
arguments. ``--only NAME`` runs one of them.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

# Modules that serve the benchmarks (a load generator, the compared pipelines) but are not ones.
_HELPERS = {"baselines", "kafkacaps", "loadgen", "pipelines"}


def _benchmarks() -> list[str]:
    here = str(Path(__file__).parent)
    return sorted(
        m.name
        for m in pkgutil.iter_modules([here])
        if not m.name.startswith("_") and m.name not in _HELPERS
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short smoke runs")
    parser.add_argument("--only", choices=_benchmarks(), help="run one benchmark")
    args = parser.parse_args(argv)
    status = 0
    for name in [args.only] if args.only else _benchmarks():
        module = importlib.import_module(f"bench.{name}")
        run = getattr(module, "main", None)
        if run is None:
            continue
        print(f"== bench.{name} ==", flush=True)
        started = time.perf_counter()
        status |= run(["--quick"] if args.quick else [])
        print(f"== bench.{name}: {time.perf_counter() - started:.0f} s ==\n", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
