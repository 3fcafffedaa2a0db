"""The core stays pure: importing it pulls in no transport, metrics or training library."""

from __future__ import annotations

from tests.imports import imported_after


def test_importing_the_core_imports_no_kafka_prometheus_or_torch() -> None:
    imported = imported_after(
        "import service.core, service.core.engine, service.core.model, service.core.state\n"
        "import service.core.readings"
    )
    bad = {
        m
        for m in imported
        if m.split(".")[0] in {"kafka", "prometheus_client", "torch", "training"}
        or m.startswith(
            ("service.kafka", "service.metrics", "service.http", "service.app", "service.config")
        )
    }
    assert not bad


def test_the_core_reads_no_environment() -> None:
    from pathlib import Path

    import service.core

    core = Path(service.core.__file__).parent
    for path in core.glob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "os.environ" not in text and "getenv" not in text, path.name
