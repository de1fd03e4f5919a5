"""A short soak under faults (the CI version of scripts/soak.py): broker restarts, a cloud
endpoint killed and restarted, memory pressure, SIGHUP and the gateway killed with kill -9,
during mixed HTTP and MQTT traffic. Nothing accepted over MQTT may be lost or answered
twice; RSS and fds stay bounded."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))

from soak import Report, _settle, soak


@pytest.mark.timeout(300)
def test_short_soak_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    report = soak(duration_s=24, workdir=tmp_path, fault_every_s=2.5)
    print(report.table())
    assert not report.lost, report.lost[:5]
    assert not report.duplicated, report.duplicated[:5]
    assert report.sent["http"] > 10 and report.sent["mqtt"] > 10
    assert report.answered["http"] > 0 and report.answered["mqtt"] > 0
    assert set(report.faults) == {"broker", "cloud", "memory", "sighup", "kill -9"}
    assert report.rss_mib[1] < report.rss_mib[0] * 1.5 + 50
    assert report.fds[1] <= report.fds[0] + 20


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
