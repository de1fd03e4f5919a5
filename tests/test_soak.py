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

from soak import soak


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
