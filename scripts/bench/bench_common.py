"""Shared by the benchmark scripts: where the repo is, and the bench model."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_broker(directory: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    config = directory / "mosquitto.conf"
    # set_tcp_nodelay: without it the broker holds small packets for delayed ACKs (~40 ms).
    config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n")
    broker = subprocess.Popen(
        [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(500):
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return broker, port
        time.sleep(0.01)
    raise RuntimeError("mosquitto did not start")
