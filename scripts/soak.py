"""Soak under faults: mixed HTTP and MQTT traffic (streaming, cancels) against a gateway
with a cloud endpoint. Two segments, one table each:

- steady: one gateway process, never killed, while the broker restarts, the cloud endpoint
  is killed and comes back and memory pressure comes and goes. Once each of these faults
  has run (first uses are not leaks), its RSS and open fds are sampled every few seconds
  for --steady-s; the least squares slope of each against requests
  served (KiB and fds per 1000 requests) fails the soak above its limit (soak_report.py).
- faults: the same, plus SIGHUP after the model pointer moves (between the bundled tiny
  model and SmolLM2-135M-Instruct: the switch must show in /v1/agent/status and in a reply)
  and kill -9 of the gateway, restarted on the same port, state directory and MQTT session.
  One row per kill: the HTTP requests in flight at the kill (the only ones it may cut), how
  long until /ready answered again, and the failures among the requests sent after it
  (HTTP clients wait for /ready before sending): there must be none.

At the end it counts what was sent, answered, rejected (with reasons), cancelled, cut, lost
(must be 0) and duplicated (must be 0). The MQTT device keeps listening after the last final
(until the answer to a sentinel request) and counts every answer per request: a second
answer fails unless it repeats the first after a broker restart or kill -9 (MQTT's
at-least-once redelivery).

Usage: python scripts/soak.py [--duration-s 300] [--steady-s 150] [--fault-every-s 4]
(CI, tests/test_soak.py: 80 s, 24 s of them sampled steady, a fault every 2.5 s)
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import itertools
import random
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from soak_gateway import Gateway, install_models  # noqa: E402
from soak_report import RSS_LIMIT_KIB_PER_1000, Report, floor, leak_verdict, sample  # noqa: E402

from tests.conftest import Daemon, start_daemon  # noqa: E402  (the repo's own fixtures)
from tests.mqtt_support import ANSWERS, Broker, Device, free_port  # noqa: E402

# No model named: whichever model the pointer serves answers (and the switch shows in replies)
ASK = {"messages": [{"role": "user", "content": "Status of pump 4?"}]}
STEADY_FAULTS = ("broker", "cloud", "memory")  # none of them touches the gateway's process
# SIGHUP twice a round: the gateway restarted by the kill between them must come back on the
# model the pointer names, and the next SIGHUP switches back.
ALL_FAULTS = ("sighup", "kill -9", "broker", "sighup", "cloud", "memory")


def _http_worker(gateway: Gateway, stop: threading.Event, report: Report, seed: int) -> None:
    rng = random.Random(seed)
    with httpx.Client(timeout=60) as client:
        while (ticket := gateway.admit(stop)) is not None:
            sent_at = time.monotonic()
            report.count(report.sent, "http")
            try:
                failure = _http_request(client, gateway.url, rng, report)
            except httpx.HTTPError as exc:
                failure = f"http {type(exc).__name__}: {exc}"
            finally:
                gateway.release(ticket)
            if failure is not None and gateway.cut(ticket):
                failure = None  # in flight at a kill -9: HTTP has no redelivery
            elif failure is not None and report.cloud_cut(sent_at, failure):
                failure = None
            elif failure is not None:
                report.failed.append(failure)
            report.serve()
            report.outcome(sent_at, "http", failed=failure is not None)


def _http_request(client: httpx.Client, url: str, rng: random.Random, report: Report) -> str | None:
    """One request, plain or streamed (and maybe cancelled); what went wrong, if anything."""
    body = {**ASK, "max_tokens": rng.randint(4, 64), "temperature": 0.7}
    route = rng.choice(["prefer_local", "prefer_local", "local_only", "prefer_cloud"])
    headers = {"X-Edge-Route": route}
    if rng.random() < 0.5:
        reply = client.post(f"{url}/v1/chat/completions", json=body, headers=headers)
        return _count_http(report, reply)
    streaming = {**body, "stream": True}
    with client.stream(
        "POST", f"{url}/v1/chat/completions", json=streaming, headers=headers
    ) as streamed:
        if streamed.status_code != 200:
            streamed.read()
            return _count_http(report, streamed)
        cancel_after = rng.randint(1, 8) if rng.random() < 0.2 else None
        for number, line in enumerate(streamed.iter_lines()):
            if cancel_after is not None and number >= cancel_after:
                report.count(report.cancelled, "http")
                return None
            if line == "data: [DONE]":
                report.count(report.answered, "http")
                return None
    return "http stream ended without [DONE]"


def _count_http(report: Report, reply: httpx.Response) -> str | None:
    """200 is answered; 503 (busy, short of resources: with Retry-After) is a rejection the
    API documents; any other status is a failure."""
    if reply.status_code == 200:
        report.count(report.answered, "http")
        return None
    try:
        error = reply.json()["error"]
        code, message = error["code"], error["message"]
    except (ValueError, KeyError, TypeError):
        code, message = str(reply.status_code), reply.text
    report.count(report.rejected, f"http {reply.status_code} {code}")
    return None if reply.status_code == 503 else f"http {reply.status_code} {code}: {message}"


RECONNECT_S = 10.0  # a gateway's reconnect backoff after a broker restart, at most
# Requests a device has out at once: enough to fill a batch and to queue during a kill -9
# or a broker restart, few enough that SmolLM2 (about a tenth of tiny's speed) keeps up.
MQTT_OUTSTANDING = 8
# The gateway keeps each MQTT final this long to answer a redelivery (default 600 s): its
# cache grows by design for that long, then holds steady. Long enough for a redelivery after
# a broker restart (1 s and a reconnect of up to RECONNECT_S) or a kill -9 (the spool).
DEDUPE_TTL_S = 20
MEMORY_MARGIN_MB = 3000  # the gateway's memory reserve: what was available at the start less this


class TimedDevice(Device):
    """A device that notes when each reply arrived (the soak reads them only at the end),
    and counts the answers as they arrive (requests served, for the leak slope)."""

    def __init__(self, report: Report, *args: Any, **kwargs: Any) -> None:
        self._arrivals: dict[int, float] = {}
        self.answers = 0
        self.answered = threading.Condition()
        super().__init__(*args, **kwargs)
        put = self.inbox.put

        def timed_put(item: Any, block: bool = True, timeout: float | None = None) -> None:
            self._arrivals[id(item[1])] = time.monotonic()  # paho's thread, as it arrives
            if item[0] == self.reply_topic and item[1].get("type") in ANSWERS:
                report.serve()
                with self.answered:
                    self.answers += 1
                    self.answered.notify_all()
            put(item, block, timeout)

        self.inbox.put = timed_put  # type: ignore[method-assign]

    def wait_below(self, sent: int, outstanding: int, stop: threading.Event) -> bool:
        """Wait until fewer than `outstanding` requests await their answer (False: stop)."""
        with self.answered:
            while sent - self.answers >= outstanding:
                if stop.is_set():
                    return False
                self.answered.wait(0.5)
        return not stop.is_set()

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


def _thread(report: Report, target: Callable[..., None], *args: Any) -> threading.Thread:
    """A soak thread whose death fails the soak: a traffic thread that died silently once
    left 440 MQTT requests neither answered nor counted lost."""

    def guarded() -> None:
        try:
            target(*args)
        except Exception as exc:
            report.thread_errors.append(f"{target.__name__} died: {exc!r}")

    return threading.Thread(target=guarded, name=target.__name__)


def _mqtt_traffic(broker: Broker, stop: threading.Event, report: Report, seed: int) -> None:
    """Publish requests until `stop`, then wait for every answer and settle each request."""
    rng = random.Random(seed)
    device = TimedDevice(report, broker, persistent=True)
    sent: dict[str, float] = {}  # correlation -> when it was sent
    while device.wait_below(len(sent), MQTT_OUTSTANDING, stop):
        body = {**ASK, "max_tokens": rng.randint(4, 48), "stream": rng.random() < 0.3}
        sent_at = time.monotonic()
        try:
            correlation = device.request("gw-soak", body)
        except (RuntimeError, ValueError):  # the broker is restarting: try again
            time.sleep(0.2)
            continue
        report.count(report.sent, "mqtt")
        sent[correlation] = sent_at
        if rng.random() < 0.1:
            # During a broker restart paho refuses the publish (it raised here once and
            # killed this thread): the request stands and is answered.
            with contextlib.suppress(RuntimeError, ValueError):
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
    for correlation, sent_at in sent.items():
        wrong = len(report.lost) + len(report.duplicated)
        _settle(report, correlation, replies.get(correlation, []))
        report.outcome(sent_at, "mqtt", failed=len(report.lost) + len(report.duplicated) > wrong)
    device.close()


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
    reserve_mb: int,
) -> None:
    """One fault every `every_s` seconds, in turn, each undone before the next: those that
    leave the gateway's process alone in the steady segment, then all of them."""
    steady = itertools.cycle(STEADY_FAULTS)
    every = itertools.cycle(ALL_FAULTS)
    while not stop.wait(every_s):
        fault = next(steady if time.monotonic() < report.steady_until else every)
        report.count(report.faults, fault)
        try:
            _fault(fault, broker, cloud, gateway, report, reserve_mb)
        except Exception as exc:  # a gateway that does not come back ends the soak
            report.failed.append(f"{fault}: {type(exc).__name__}: {exc}")
            stop.set()
        if all(report.faults[name] for name in STEADY_FAULTS):
            report.warmed.set()


def _fault(
    fault: str, broker: Broker, cloud: list[Daemon], gateway: Gateway, report: Report,
    reserve_mb: int,
) -> None:  # fmt: skip
    if fault == "broker":
        began = time.monotonic()
        broker.stop()
        time.sleep(1.0)
        broker.start()
        report.restarts.append((began, time.monotonic()))
    elif fault == "cloud":
        report.cloud_kills.append(time.monotonic())
        cloud[0].process.kill()
        cloud[0].process.wait(10)
        time.sleep(1.0)
        cloud[0] = start_daemon("--http-port", cloud[0].url.rsplit(":", 1)[1])
    elif fault == "memory":
        _memory_pressure(reserve_mb, seconds=2.0)
    elif fault == "sighup":
        report.switches.append(gateway.switch_model())
    else:
        kill = gateway.kill_and_restart()
        report.restarts.append((kill.at, kill.ready_at))


def _memory_pressure(reserve_mb: int, seconds: float) -> None:
    """Hold enough memory that the gateway's governor sees it short: what is available now
    above its reserve, and 300 MiB more. Measured now, as other processes on the machine
    come and go; the reserve leaves MEMORY_MARGIN_MB of what was available at the start, so
    that the model, loaded again after a kill -9, still fits while others take some."""
    available_mb = psutil.virtual_memory().available / 2**20
    block = bytearray(int(max(0, available_mb - reserve_mb) + 300) * 2**20)
    block[::4096] = b"\1" * len(block[::4096])  # touch every page
    time.sleep(seconds)
    del block


def _sample_steady(
    gateway: Gateway, stop: threading.Event, report: Report, steady_s: float, every_s: float
) -> None:
    """RSS and fds of the one gateway process of the steady segment, once each of its faults
    has run (first uses are not leaks) and its cache of MQTT finals is full (it grows for
    DEDUPE_TTL_S), for `steady_s`: read every 0.1 s, one sample (the floor) every
    `every_s` seconds."""
    while not report.warmed.wait(0.5):
        if stop.is_set():
            return
    if stop.wait(report.began + DEDUPE_TTL_S - time.monotonic()):
        return
    report.steady_until = time.monotonic() + steady_s
    while time.monotonic() + every_s <= report.steady_until:
        readings = []
        end = time.monotonic() + every_s
        while time.monotonic() < end:
            readings.append(sample(gateway.pid, report.served, time.monotonic()))
            if stop.wait(0.1):
                return
        report.samples.append(floor(readings))


def soak(
    duration_s: float,
    workdir: Path,
    fault_every_s: float = 4.0,
    steady_s: float = 150.0,
    sample_every_s: float = 3.0,
    rss_limit: float = RSS_LIMIT_KIB_PER_1000,
    http_workers: int = 2,
) -> Report:
    report = Report()
    broker = Broker(workdir / "broker")
    (workdir / "broker").mkdir(parents=True, exist_ok=True)
    broker.start()
    cloud = [start_daemon()]
    reserve_mb = int(psutil.virtual_memory().available / 2**20 - MEMORY_MARGIN_MB)
    models_dir = workdir / "state" / "models"
    gateway = Gateway((
        "--mqtt-url", broker.url, "--device-id", "gw-soak", "--cloud",
        f"openai={cloud[0].url}/v1#tiny", "--breaker-cooldown-s", "2", "--probe-interval-s",
        "1", "--memory-reserve-mb", str(reserve_mb), "--memory-resume-mb",
        str(reserve_mb + 100), "--cpu-enter-percent", "100", "--max-queue", "64",
        "--http-port", str(free_port()), "--state-dir", str(workdir / "state"),
        "--model-watch-interval-s", "3600",  # only SIGHUP moves it to the new pointer
        "--mqtt-dedupe-ttl-s", str(DEDUPE_TTL_S),
    ), models_dir, install_models(models_dir))  # fmt: skip
    stop = threading.Event()
    try:
        report.began = time.monotonic()
        workers = [
            _thread(report, _http_worker, gateway, stop, report, n) for n in range(http_workers)
        ]
        workers.append(
            _thread(
                report, _faults, broker, cloud, gateway, stop, report, fault_every_s, reserve_mb
            )
        )
        workers.append(
            _thread(report, _sample_steady, gateway, stop, report, steady_s, sample_every_s)
        )
        mqtt = _thread(report, _mqtt_traffic, broker, stop, report, 99)
        for worker in [*workers, mqtt]:
            worker.start()
        stop.wait(duration_s)
        stop.set()
        report.ended = time.monotonic()
        for worker in workers:
            worker.join(120)
        mqtt.join(180)
        report.kills = gateway.kills
        report.leak = leak_verdict(report.samples, rss_limit)
        if gateway.daemon.process.poll() is not None:
            report.lost.append(f"the gateway exited with {gateway.daemon.process.returncode}")
    finally:
        for daemon in (gateway.daemon, cloud[0]):
            if daemon.process.poll() is None:
                daemon.stop()
        broker.stop()
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration-s", type=float, default=300)
    parser.add_argument("--steady-s", type=float, default=150, help="at least 120")
    parser.add_argument("--fault-every-s", type=float, default=4.0)
    parser.add_argument("--sample-every-s", type=float, default=3.0)
    args = parser.parse_args()
    if args.steady_s < 120 or args.duration_s < args.steady_s + 60:
        parser.error("--steady-s: at least 120 s; --duration-s: at least a minute more")
    with tempfile.TemporaryDirectory() as workdir:
        report = soak(args.duration_s, Path(workdir), args.fault_every_s, args.steady_s,
                      args.sample_every_s)  # fmt: skip
    print(f"\nsoak for {args.duration_s:.0f} s ({args.steady_s:.0f} s steady) with a fault "
          f"every {args.fault_every_s:g} s\n")  # fmt: skip
    print(report.table())
    problems = report.lost + report.duplicated + report.problems()
    for problem in problems[:20]:
        print("  -", problem)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
