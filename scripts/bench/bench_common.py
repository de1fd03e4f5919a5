"""Shared by the benchmark scripts: where the repo is, and the bench model."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: llama.cpp's venv imports this module without paho
    import paho.mqtt.client as paho

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


BUILD_PYTHON = REPO / ".venv-build" / "bin" / "python"  # torch, transformers, onnx


def ensure_model(path: Path, *build_args: str) -> Path:
    """A bench model folder, built by scripts/build_bench_model.py (with `build_args`)
    when a variant is missing."""
    variants = ("cpu-int4", "cpu-int4-pruned")
    if not all((path / v / "genai_config.json").is_file() for v in variants):
        if not BUILD_PYTHON.exists():
            sys.exit(f"{path} is missing and .venv-build is not there: run `make model`")
        script = REPO / "scripts" / "build_bench_model.py"
        subprocess.run([BUILD_PYTHON, script, "--out", path, *build_args], check=True)
    return path


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


def mqtt_device(port: int, topic: str, on_message: Callable) -> paho.Client:
    """A paho MQTT 5 client subscribed to `topic` (its replies), Nagle off, loop running."""
    import paho.mqtt.client as paho

    client = paho.Client(
        callback_api_version=paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5
    )
    subscribed = threading.Event()
    client.on_connect = lambda c, *a: c.subscribe(topic, 1)
    client.on_subscribe = lambda *a: subscribed.set()
    client.on_message = on_message
    client.on_socket_open = lambda c, u, sock: sock.setsockopt(
        socket.IPPROTO_TCP, socket.TCP_NODELAY, 1
    )
    client.connect("127.0.0.1", port)
    client.loop_start()
    if not subscribed.wait(10):
        raise RuntimeError("MQTT subscribe timed out")
    return client
