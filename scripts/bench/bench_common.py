"""Shared by the benchmark scripts: where the repo is, and the bench model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def ensure_model(path: Path) -> Path:
    """The bench model's int4 CPU folder, built with the build tools if missing."""
    variant = path / "cpu-int4"
    if not (variant / "genai_config.json").is_file():
        builder = REPO / ".venv-build" / "bin" / "python"
        if not builder.exists():
            sys.exit("models/bench is missing and .venv-build is not there: run `make model`")
        script = REPO / "scripts" / "build_bench_model.py"
        subprocess.run([builder, script, "--out", path], check=True)
    return variant
