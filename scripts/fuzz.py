"""Nightly fuzzing: the CI fuzz tests with many more generated cases.

Usage: python scripts/fuzz.py [--examples 500]   (CI runs 15 per HTTP operation)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=500, help="per HTTP operation")
    args = parser.parse_args()
    env = {**os.environ, "EDGE_AGENT_FUZZ_EXAMPLES": str(args.examples)}
    command = [sys.executable, "-m", "pytest", "tests/test_fuzz.py", "-p", "no:timeout", "-q"]
    sys.exit(subprocess.run(command, cwd=REPO, env=env).returncode)


if __name__ == "__main__":
    main()
