"""The governor and the hardware inventory follow the cgroup: CPU use against the quota
(cpu.max, cpu.stat), memory against memory.high, and the working set without reclaimable
page cache. Recorded trees under tests/fixtures/boards drive them; a tree copied into
tmp_path has its cpu.stat rewritten between two samples, taken at explicit clock times."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from agent.engine.local import LocalEngine
from agent.engine.select import select
from agent.hardware.inventory import detect
from agent.hardware.providers import Installed
from agent.routing.governor import ResourceGovernor
from agent.settings import EngineSettings, GovernorSettings
from tests.conftest import TINY

BOARDS = Path(__file__).parent / "fixtures" / "boards"
LIMITED = "rpi5-systemd-limits"  # MemoryHigh=1.5G, MemoryMax=2G, CPUQuota=50%
SERVICE = Path("sys/fs/cgroup/system.slice/edge-agent.service")
GIB = 1024**3
MIB = 1024**2


class Clock:
    """The governor's time source, moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def governor(root: Path, clock: Clock, **limits: float) -> ResourceGovernor:
    """A governor on `root` with a real engine that is never started (refresh reads no
    engine state; shortages() reads its empty queue)."""
    plans = select(TINY, None, "cpu", True, {}, detect(), Installed()).plans
    engine = LocalEngine(plans, EngineSettings())
    settings = GovernorSettings(hardware_root=root, **limits)
    return ResourceGovernor(settings, engine.load, clock=clock)


def copy_board(name: str, tmp_path: Path) -> Path:
    root = tmp_path / name
    shutil.copytree(BOARDS / name, root)
    return root


def set_cpu_usage(root: Path, usage_usec: int) -> None:
    stat = root / SERVICE / "cpu.stat"
    _, rest = stat.read_text().split("\n", 1)  # usage_usec is the first line
    stat.write_text(f"usage_usec {usage_usec}\n{rest}")


def test_cpu_is_measured_against_the_quota(tmp_path: Path) -> None:
    root = copy_board(LIMITED, tmp_path)
    clock = Clock()
    gov = governor(root, clock, cpu_enter_percent=85, cpu_leave_percent=70)
    usage = 73_849_120
    gov.refresh()  # the baseline
    assert gov.cpu.value is None and "cpu" not in gov.shortages()

    clock.now += 10
    usage += 4_500_000  # 0.45 s of CPU per second: 90 % of a 0.5 CPU quota
    set_cpu_usage(root, usage)
    gov.refresh()
    assert gov.cpu.value == pytest.approx(90.0)
    assert gov.shortages() == ["cpu"]  # host-wide this would be 0.45 / 4 cores, about 11 %

    clock.now += 2
    usage += 150_000  # 0.075 s per second: 15 %
    set_cpu_usage(root, usage)
    gov.refresh()
    assert gov.cpu.value == pytest.approx(15.0)
    assert gov.shortages() == []


def test_cpu_below_the_leave_level_only_ends_a_shortage(tmp_path: Path) -> None:
    root = copy_board(LIMITED, tmp_path)
    clock = Clock()
    gov = governor(root, clock, cpu_enter_percent=85, cpu_leave_percent=70)
    usage = 73_849_120
    gov.refresh()
    readings = []
    for per_second in (0.45, 0.40, 0.34, 0.44, 0.43):  # 90, 80, 68, 88, 86 %
        clock.now += 1
        usage += int(per_second * 1_000_000)
        set_cpu_usage(root, usage)
        gov.refresh()
        readings.append((round(gov.cpu.value), gov.cpu.short))
    assert readings == [(90, True), (80, True), (68, False), (88, True), (86, True)]


def test_memory_high_below_memory_max_is_the_limit() -> None:
    profile = detect(BOARDS / LIMITED)
    assert profile.container.memory_limit_bytes == int(1.5 * GIB)  # not memory.max's 2 GiB
    assert profile.usable_memory_bytes == int(1.5 * GIB)


def test_inactive_file_is_not_counted_as_used() -> None:
    # memory.current 1.5 GiB, of which 1 GiB is inactive page cache: 0.5 GiB working set.
    profile = detect(BOARDS / "x86-container")
    assert profile.container.memory_used_bytes == GIB // 2
    assert profile.available_memory_bytes == int(3.5 * GIB)


def test_the_governor_memory_signal_follows_memory_high_and_the_working_set() -> None:
    # 1.5 GiB (memory.high) - (1.25 GiB current - 0.75 GiB inactive_file) = 1 GiB
    gov = governor(BOARDS / LIMITED, Clock(), memory_reserve_mb=900, memory_resume_mb=1000)
    gov.refresh()
    assert gov.memory.value == pytest.approx(1024)
    assert gov.shortages() == []
    tight = governor(BOARDS / LIMITED, Clock(), memory_reserve_mb=1100, memory_resume_mb=1200)
    tight.refresh()
    assert tight.shortages() == ["memory"]


def test_page_cache_does_not_push_the_governor_to_the_cloud() -> None:
    # 4 GiB limit, 1.5 GiB current of which 1 GiB inactive_file: 3.5 GiB are there to take.
    gov = governor(BOARDS / "x86-container", Clock(), memory_reserve_mb=3000)
    gov.refresh()
    assert gov.memory.value == pytest.approx(3.5 * 1024)
    assert gov.shortages() == []


def test_the_host_memavailable_still_caps_the_cgroup_room(tmp_path: Path) -> None:
    root = copy_board(LIMITED, tmp_path)
    meminfo = root / "proc" / "meminfo"
    recorded = meminfo.read_text()
    meminfo.write_text(recorded.replace("MemAvailable:   7513260", "MemAvailable:    524288"))
    gov = governor(root, Clock())
    gov.refresh()
    assert gov.memory.value == pytest.approx(512)
    assert detect(root).available_memory_bytes == 512 * MIB


def test_cgroup_v1_working_set_leaves_out_inactive_file(tmp_path: Path) -> None:
    (tmp_path / "proc" / "self").mkdir(parents=True)
    (tmp_path / "proc" / "self" / "cgroup").write_text("4:memory:/edge\n3:cpu,cpuacct:/edge\n")
    memory = tmp_path / "sys" / "fs" / "cgroup" / "memory" / "edge"
    memory.mkdir(parents=True)
    (memory / "memory.limit_in_bytes").write_text(f"{2 * GIB}\n")
    (memory / "memory.usage_in_bytes").write_text(f"{GIB + 512 * MIB}\n")
    (memory / "memory.stat").write_text(
        f"cache {1280 * MIB}\ninactive_file {64 * MIB}\ntotal_inactive_file {GIB}\n"
    )
    profile = detect(tmp_path)
    assert profile.container.version == 1
    assert profile.container.memory_used_bytes == 512 * MIB
    assert profile.available_memory_bytes == int(1.5 * GIB)


@pytest.mark.parametrize("garbled", ["half 100000", "50000 0"])
def test_a_garbled_cpu_max_means_no_quota(tmp_path: Path, garbled: str) -> None:
    root = copy_board(LIMITED, tmp_path)
    (root / SERVICE / "cpu.max").write_text(f"{garbled}\n")
    assert detect(root).container.cpu_quota is None
