"""What a fresh interpreter has imported after running some code."""

from __future__ import annotations

import subprocess
import sys


def imported_after(code: str) -> set[str]:
    """The names in ``sys.modules`` once `code` has run in a new Python process."""
    script = code + "\nimport sys\nprint(' '.join(sorted(sys.modules)))\n"
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    return set(out.stdout.strip().splitlines()[-1].split())
