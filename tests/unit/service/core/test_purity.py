"""The core stays pure: importing it pulls in no transport, metrics or training library."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_core_imports_no_kafka_prometheus_or_torch() -> None:
    code = (
        "import sys\n"
        "import service.core, service.core.engine, service.core.model, service.core.state\n"
        "import service.core.readings\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'kafka', 'prometheus_client', 'torch', 'training'} or m.startswith("
        "('service.kafka', 'service.metrics', 'service.http', 'service.app', 'service.config')))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == ""


def test_the_core_reads_no_environment() -> None:
    from pathlib import Path

    import service.core

    core = Path(service.core.__file__).parent
    for path in core.glob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "os.environ" not in text and "getenv" not in text, path.name
