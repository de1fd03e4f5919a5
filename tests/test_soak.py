"""A short soak under faults (the CI version of scripts/soak.py). A steady segment with one
gateway process, at least 20 s of it sampled, gives the leak slopes of RSS and fds against
requests served; then SIGHUP switches between the bundled tiny model and SmolLM2 through
the model pointer, and kill -9 restarts the gateway. Nothing accepted over MQTT may be lost
or answered twice, nothing but the requests in flight at a kill may fail, and the leak
check can fail (a leaking process and a planted slope fed to the same verdict)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))

from soak import Report, _settle, _thread, soak
from soak_report import (
    CI_RSS_LIMIT_KIB_PER_1000,
    FDS_LIMIT_PER_1000,
    Sample,
    floor,
    leak_verdict,
    sample,
)


@pytest.mark.timeout(420)
def test_short_soak_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    report = soak(
        duration_s=80, workdir=tmp_path, fault_every_s=2.5, steady_s=28, sample_every_s=2,
        rss_limit=CI_RSS_LIMIT_KIB_PER_1000,
    )  # fmt: skip
    print(report.table())
    assert not report.lost, report.lost[:5]
    assert not report.duplicated, report.duplicated[:5]
    assert not report.problems(), report.problems()[:5]
    assert report.sent["http"] > 10 and report.sent["mqtt"] > 10
    assert report.answered["http"] > 0 and report.answered["mqtt"] > 0
    assert set(report.faults) == {"broker", "cloud", "memory", "sighup", "kill -9"}
    assert report.leak is not None and report.leak.seconds >= 20 and report.leak.samples >= 10
    assert report.leak.served > 100
    assert [s.wanted for s in report.switches][:2] == ["smollm2-135m-instruct", "tiny"]
    assert all(0 < kill.ready_at - kill.at < 60 for kill in report.kills)


def test_the_leak_check_fails_on_a_planted_slope() -> None:
    """The verdict of the soak fed series with a known slope: flat with noise passes, 4 KiB
    or one fd per 100 requests fails, and a segment that served nothing gives no slope."""
    noise = [0, 300, -200, 100, -300, 200, 0, -100, 300, -200]  # KiB, as allocators wobble
    flat = [Sample(n, 500 * n, (200 * 1024 + noise[n]) * 1024, 20 + n % 3) for n in range(10)]
    assert leak_verdict(flat).passed, leak_verdict(flat).problems
    leaking = [Sample(s.at, s.served, s.rss + 4 * s.served * 1024, s.fds) for s in flat]
    verdict = leak_verdict(leaking)
    assert not verdict.passed and verdict.rss_kib_per_1000 == pytest.approx(4000, rel=0.1)
    assert not leak_verdict(leaking, CI_RSS_LIMIT_KIB_PER_1000).passed
    fds = [Sample(s.at, s.served, s.rss, 20 + s.served // 100) for s in flat]
    assert not leak_verdict(fds).passed and "fds grow" in leak_verdict(fds).problems[0]
    idle = [Sample(n, 0, 200 * 2**20, 20) for n in range(10)]
    assert leak_verdict(idle).problems[0].startswith("no slope")


LEAKER = """
import os, sys
kept = []
for number, line in enumerate(sys.stdin):
    reply = bytearray(os.urandom(16 * 1024))  # 16 KiB per request
    if sys.argv[1] == "leak":  # kept, never freed, and an fd every 50 requests
        kept.append(reply)
        if number % 50 == 0:
            kept.append(open(os.devnull))
    print("ok", flush=True)
"""


def _serve_and_sample(mode: str) -> list[Sample]:
    """1000 requests to a real process, sampled every 100 as the soak samples the gateway."""
    process = subprocess.Popen(
        [sys.executable, "-c", LEAKER, mode], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert process.stdin is not None and process.stdout is not None
    samples = []
    try:
        for served in range(1, 1001):
            process.stdin.write("request\n")
            process.stdin.flush()
            assert process.stdout.readline() == "ok\n"  # served: the reply is the event
            if served % 100 == 0:
                samples.append(floor([sample(process.pid, served, float(served))]))
    finally:
        process.kill()
        process.wait()
    return samples


def test_the_leak_check_fails_on_a_leaking_process() -> None:
    """A real process that keeps 16 KiB, and one fd in 50, of every request it serves fails
    the same verdict; the same process freeing them passes."""
    verdict = leak_verdict(_serve_and_sample("leak"))
    assert verdict.rss_kib_per_1000 is not None and verdict.fds_per_1000 is not None
    assert verdict.rss_kib_per_1000 > 4 * CI_RSS_LIMIT_KIB_PER_1000
    assert verdict.fds_per_1000 > FDS_LIMIT_PER_1000
    assert not verdict.passed and len(verdict.problems) == 2
    assert leak_verdict(_serve_and_sample("free")).passed


def test_the_soak_counts_every_answer_per_request() -> None:
    """The soak's exactly-once check can fail: a final after `rejected`, two different
    finals, or the same final twice with no broker restart or kill -9 between the copies."""
    final = {"type": "final", "text": "ok", "finish_reason": "stop"}
    rejected = {"type": "rejected", "code": "server_busy", "message": "busy"}
    report = Report(restarts=[(10.0, 11.0)])
    _settle(report, "ok", [(1.0, {"type": "accepted"}), (2.0, final)])
    _settle(report, "redelivered", [(9.5, final), (12.0, final)])  # a restart at 10 between
    assert not report.duplicated and report.redelivered == 1 and report.answered["mqtt"] == 2
    _settle(report, "twice", [(2.0, final), (3.0, final)])  # no restart between
    _settle(report, "after-rejected", [(2.0, rejected), (3.0, final)])
    _settle(report, "different", [(2.0, final), (12.0, {**final, "text": "other"})])
    _settle(report, "lost", [(2.0, {"type": "accepted"})])
    assert [line.split(":")[0] for line in report.duplicated] == [
        "mqtt twice", "mqtt after-rejected", "mqtt different"]  # fmt: skip
    assert report.lost == ["mqtt lost: no final"]


def test_only_requests_in_flight_at_a_cloud_kill_count_as_cut_by_it() -> None:
    report = Report(cloud_kills=[10.0])
    assert report.cloud_cut(9.0, "http 500 engine_error: openai failed mid-reply")
    assert not report.cloud_cut(11.0, "http 500 engine_error: sent after the kill")
    assert not report.cloud_cut(9.0, "http 404 model_not_found: not a cloud failure")
    assert report.cut_by_cloud == 1


def test_a_soak_thread_that_dies_fails_the_soak() -> None:
    """A traffic thread that dies (a cancel published while the broker restarts raised
    once) leaves its requests neither answered nor lost: the soak must fail on it."""
    report = Report()

    def _mqtt_traffic() -> None:
        raise RuntimeError("The client is not currently connected.")

    worker = _thread(report, _mqtt_traffic)
    worker.start()
    worker.join()
    assert report.problems() == [
        "_mqtt_traffic died: RuntimeError('The client is not currently connected.')"
    ]
