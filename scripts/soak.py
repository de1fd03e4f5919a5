"""Soak under faults: mixed HTTP and MQTT traffic (streaming, cancels) against a gateway
with a cloud endpoint, while the broker restarts, the cloud endpoint is killed and comes
back, memory pressure comes and goes, SIGHUP asks for a reload, and the gateway itself is
killed with kill -9 and restarted (same state directory and MQTT session). At the end it counts
what was sent, answered, rejected (with reasons), cancelled, lost (must be 0) and
duplicated (must be 0), and the gateway's RSS and file-descriptor growth. One table.
The MQTT device keeps listening after the last final (until the answer to a sentinel
request) and counts every answer per request: a second answer fails unless it repeats the
first after a broker restart or kill -9 (MQTT's at-least-once redelivery).

Usage: python scripts/soak.py [--duration-s 300] [--fault-every-s 4]   (CI: 24 s, every 2.5 s)
"""

from __future__ import annotations

import argparse
import collections
import itertools
import random
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.conftest import Daemon, start_daemon  # noqa: E402  (the repo's own fixtures)
from tests.mqtt_support import ANSWERS, Broker, Device, free_port  # noqa: E402

ASK = {"model": "tiny", "messages": [{"role": "user", "content": "Status of pump 4?"}]}


@dataclass
class Report:
    sent: collections.Counter = field(default_factory=collections.Counter)
    answered: collections.Counter = field(default_factory=collections.Counter)
    cancelled: collections.Counter = field(default_factory=collections.Counter)
    rejected: collections.Counter = field(default_factory=collections.Counter)  # by reason
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)  # answered twice, unexplained
    redelivered: int = 0  # the same final again after a restart (at-least-once)
    faults: collections.Counter = field(default_factory=collections.Counter)
    # Broker restarts and kill -9s: (when it began, when it was undone), monotonic seconds
    restarts: list[tuple[float, float]] = field(default_factory=list)
    rss_mib: tuple[float, float] = (0.0, 0.0)
    fds: tuple[int, int] = (0, 0)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, bucket: collections.Counter, key: str) -> None:
        with self.lock:
            bucket[key] += 1

    def table(self) -> str:
        rows = [
            ("requests sent", f"http {self.sent['http']}, mqtt {self.sent['mqtt']}"),
            ("answered", f"http {self.answered['http']}, mqtt {self.answered['mqtt']}"),
            ("cancelled by the client", f"http {self.cancelled['http']}, "
                                        f"mqtt {self.cancelled['mqtt']}"),
            ("rejected, by reason", ", ".join(f"{k} {v}" for k, v in self.rejected.items())
             or "none"),
            ("lost", str(len(self.lost))),
            ("duplicated (answered twice)", str(len(self.duplicated))),
            ("finals redelivered unchanged", str(self.redelivered)),
            ("faults", ", ".join(f"{k} {v}" for k, v in self.faults.items())),
            ("gateway RSS MiB (its process warmed up -> end)", f"{self.rss_mib[0]:.0f} -> "
                                                       f"{self.rss_mib[1]:.0f}"),
            ("gateway open fds (its process warmed up -> end)", f"{self.fds[0]} -> {self.fds[1]}"),
        ]  # fmt: skip
        width = max(len(r[0]) for r in rows)
        return "\n".join(
            ["| what | count |", "| --- | --- |"]
            + [f"| {name:<{width}} | {value} |" for name, value in rows]
        )


@dataclass
class Gateway:
    """The gateway under test. A kill -9 replaces its process: same port, same state
    directory, same MQTT session, as systemd's Restart= would bring it back."""

    flags: tuple[str, ...]
    daemon: Daemon = field(init=False)
    killed_at: float = -1e9
    baseline: tuple[int, int] = (0, 0)  # RSS and fds of the current process, warmed up

    def __post_init__(self) -> None:
        self.start()

    @property
    def url(self) -> str:
        return self.daemon.url

    def start(self) -> None:
        self.daemon = start_daemon(*self.flags)
        warm = httpx.post(f"{self.url}/v1/chat/completions", json={**ASK, "max_tokens": 4})
        warm.raise_for_status()
        process = psutil.Process(self.daemon.process.pid)
        self.baseline = (process.memory_info().rss, process.num_fds())

    def kill_and_restart(self) -> None:
        self.killed_at = time.monotonic()
        self.daemon.process.kill()
        self.daemon.process.wait(10)
        self.start()

    def cut_by_kill(self) -> bool:
        return time.monotonic() - self.killed_at < 15


def _http_worker(gateway: Gateway, stop: threading.Event, report: Report, seed: int) -> None:
    rng = random.Random(seed)
    with httpx.Client(base_url=gateway.url, timeout=60) as client:
        while not stop.is_set():
            report.count(report.sent, "http")
            body = {**ASK, "max_tokens": rng.randint(4, 64), "temperature": 0.7}
            route = rng.choice(["prefer_local", "prefer_local", "local_only", "prefer_cloud"])
            headers = {"X-Edge-Route": route}
            try:
                if rng.random() < 0.5:
                    reply = client.post("/v1/chat/completions", json=body, headers=headers)
                    _count_http(report, reply.status_code, reply)
                    continue
                streaming = {**body, "stream": True}
                with client.stream(
                    "POST", "/v1/chat/completions", json=streaming, headers=headers
                ) as streamed:
                    if streamed.status_code != 200:
                        streamed.read()
                        _count_http(report, streamed.status_code, streamed)
                        continue
                    cancel_after = rng.randint(1, 8) if rng.random() < 0.2 else None
                    for number, line in enumerate(streamed.iter_lines()):
                        if cancel_after is not None and number >= cancel_after:
                            report.count(report.cancelled, "http")
                            break
                        if line == "data: [DONE]":
                            report.count(report.answered, "http")
                            break
                    else:
                        report.lost.append("http stream ended without [DONE]")
            except httpx.HTTPError as exc:
                if gateway.cut_by_kill():  # HTTP has no redelivery: the client sees it fail
                    report.count(report.rejected, "http connection cut by kill -9")
                    time.sleep(0.2)  # as a client would, before trying again
                else:
                    report.lost.append(f"http {type(exc).__name__}: {exc}")


def _count_http(report: Report, status: int, reply: httpx.Response) -> None:
    if status == 200:
        report.count(report.answered, "http")
        return
    try:
        code = reply.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        code = str(status)
    report.count(report.rejected, f"http {status} {code}")


RECONNECT_S = 10.0  # a gateway's reconnect backoff after a broker restart, at most


class TimedDevice(Device):
    """A device that notes when each reply arrived (the soak reads them only at the end)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._arrivals: dict[int, float] = {}
        super().__init__(*args, **kwargs)
        put = self.inbox.put

        def timed_put(item: Any, block: bool = True, timeout: float | None = None) -> None:
            self._arrivals[id(item[1])] = time.monotonic()  # paho's thread, as it arrives
            put(item, block, timeout)

        self.inbox.put = timed_put  # type: ignore[method-assign]

    def arrived(self, payload: dict[str, Any]) -> float:
        return self._arrivals.get(id(payload), time.monotonic())


def _flush(device: TimedDevice) -> list[tuple[str, dict[str, Any], bytes | None]]:
    """The sentinel flush; while the last broker restart is still undone the device cannot
    publish yet, and tries again (it reconnects on its own) for up to 30 s."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return device.flush("gw-soak")
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _mqtt_traffic(
    broker: Broker, stop: threading.Event, report: Report, seed: int
) -> dict[str, list[dict]]:
    """Publish requests until `stop`, then wait for every answer; returns replies by id."""
    rng = random.Random(seed)
    device = TimedDevice(broker, persistent=True)
    sent: list[str] = []
    while not stop.is_set():
        body = {**ASK, "max_tokens": rng.randint(4, 48), "stream": rng.random() < 0.3}
        try:
            correlation = device.request("gw-soak", body)
        except (RuntimeError, ValueError):  # the broker is restarting: try again
            time.sleep(0.2)
            continue
        report.count(report.sent, "mqtt")
        sent.append(correlation)
        if rng.random() < 0.1:
            device.cancel("gw-soak", correlation)
        time.sleep(rng.uniform(0.02, 0.15))
    replies: dict[str, list[tuple[float, dict]]] = collections.defaultdict(list)
    deadline = time.monotonic() + 90
    pending = set(sent)
    while pending and time.monotonic() < deadline:
        item = device._take(lambda t, p, c: t == device.reply_topic, 1.0)
        if item is None:
            continue
        key = item[2].decode() if item[2] is not None else item[1].get("id")
        replies[key].append((device.arrived(item[1]), item[1]))
        if item[1].get("type") in ANSWERS:
            pending.discard(key)
    try:  # the grace period: answers published after the last final still count
        for _, payload, corr in _flush(device):
            key = corr.decode() if corr is not None else payload.get("id")
            replies[key].append((device.arrived(payload), payload))
    except (AssertionError, RuntimeError) as exc:
        report.lost.append(f"mqtt sentinel: {exc}")
    for correlation in sent:
        _settle(report, correlation, replies.get(correlation, []))
    return replies


def _settle(report: Report, correlation: str, replies: list[tuple[float, dict]]) -> None:
    """Exactly one answer (final or rejected) per request, from every reply and when it
    arrived. MQTT is at-least-once: after a broker restart or a kill -9 the request or its
    final is redelivered and the same final arrives again (a device keeps the first); that
    counts as redelivered when a restart overlaps the time between the two copies (from a
    second before the first, as a kill -9 leaves a final already on the broker, and until
    the gateway has reconnected after the restart was undone, as paho then sends the final
    it held while the broker was away and the broker redelivers the request). Anything else
    is duplicated: a final after `rejected`, two different answers (it ran twice), or an
    unexplained repeat."""
    answers = [(at, reply) for at, reply in replies if reply.get("type") in ANSWERS]
    if not answers:
        report.lost.append(f"mqtt {correlation}: no final")
    first_at, final = answers[0] if answers else (0.0, {})
    for at, again in answers[1:]:
        if again != final:
            what = "after rejected" if final["type"] == "rejected" else "a different answer"
            report.duplicated.append(f"mqtt {correlation}: {again['type']} {what}")
        elif any(
            began <= at and first_at - 1.0 <= undone + RECONNECT_S
            for began, undone in report.restarts
        ):
            report.redelivered += 1
        else:
            report.duplicated.append(f"mqtt {correlation}: the same final twice, no restart")
    if final.get("type") == "rejected":
        report.count(report.rejected, f"mqtt {final['code']}")
    elif final.get("finish_reason") == "cancelled":
        report.count(report.cancelled, "mqtt")
    elif final:
        report.count(report.answered, "mqtt")


def _faults(
    broker: Broker,
    cloud: list[Daemon],
    gateway: Gateway,
    stop: threading.Event,
    report: Report,
    every_s: float,
) -> None:
    """One fault every `every_s` seconds, in turn, each undone before the next."""
    for fault in itertools.cycle(["broker", "cloud", "memory", "sighup", "kill -9"]):
        if stop.wait(every_s):
            return
        report.count(report.faults, fault)
        if fault == "broker":
            began = time.monotonic()
            broker.stop()
            time.sleep(1.0)
            broker.start()
            report.restarts.append((began, time.monotonic()))
        elif fault == "cloud":
            cloud[0].process.kill()
            cloud[0].process.wait(10)
            time.sleep(1.0)
            cloud[0] = start_daemon("--http-port", cloud[0].url.rsplit(":", 1)[1])
        elif fault == "memory":
            _memory_pressure(seconds=2.0)
        elif fault == "sighup":
            gateway.daemon.process.send_signal(signal.SIGHUP)
        else:
            began = time.monotonic()
            gateway.kill_and_restart()
            report.restarts.append((began, time.monotonic()))


def _memory_pressure(seconds: float) -> None:
    """Hold enough memory that the gateway's governor sees it short (its reserve is set to
    leave 1000 MiB of what is available at the start, this takes 1200; the model, loaded
    again after a kill -9, still fits in the 1000)."""
    block = bytearray(1200 * 2**20)
    block[::4096] = b"\1" * len(block[::4096])  # touch every page
    time.sleep(seconds)
    del block


def soak(
    duration_s: float, workdir: Path, fault_every_s: float = 4.0, http_workers: int = 2
) -> Report:
    report = Report()
    broker = Broker(workdir / "broker")
    (workdir / "broker").mkdir(parents=True, exist_ok=True)
    broker.start()
    cloud = [start_daemon()]
    available_mb = psutil.virtual_memory().available / 2**20
    gateway = Gateway((
        "--mqtt-url", broker.url, "--device-id", "gw-soak", "--cloud",
        f"openai={cloud[0].url}/v1", "--breaker-cooldown-s", "2", "--probe-interval-s", "1",
        "--memory-reserve-mb", str(int(available_mb - 1000)), "--memory-resume-mb",
        str(int(available_mb - 900)), "--cpu-enter-percent", "100", "--max-queue", "64",
        "--http-port", str(free_port()), "--state-dir", str(workdir / "state"),
    ))  # fmt: skip
    stop = threading.Event()
    try:
        workers = [
            threading.Thread(target=_http_worker, args=(gateway, stop, report, n))
            for n in range(http_workers)
        ]
        workers.append(
            threading.Thread(
                target=_faults, args=(broker, cloud, gateway, stop, report, fault_every_s)
            )
        )
        for worker in workers:
            worker.start()
        mqtt = threading.Thread(target=_mqtt_traffic, args=(broker, stop, report, 99))
        mqtt.start()
        time.sleep(duration_s)
        stop.set()
        for worker in workers:
            worker.join(120)
        mqtt.join(180)
        process = gateway.daemon.process
        if process.poll() is not None:
            report.lost.append(f"the gateway exited with {process.returncode}")
        else:
            now = psutil.Process(process.pid)
            report.rss_mib = (gateway.baseline[0] / 2**20, now.memory_info().rss / 2**20)
            report.fds = (gateway.baseline[1], now.num_fds())
    finally:
        for daemon in (gateway.daemon, cloud[0]):
            if daemon.process.poll() is None:
                daemon.stop()
        broker.stop()
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration-s", type=float, default=300)
    parser.add_argument("--fault-every-s", type=float, default=4.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        report = soak(args.duration_s, Path(workdir), args.fault_every_s)
    print(f"\nsoak for {args.duration_s:.0f} s with a fault every {args.fault_every_s:g} s\n")
    print(report.table())
    for problem in (report.lost + report.duplicated)[:20]:
        print("  -", problem)
    sys.exit(1 if report.lost or report.duplicated else 0)


if __name__ == "__main__":
    main()
