"""Container limits from cgroup v2 (or v1): they override host figures when smaller."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

UNLIMITED = 1 << 60  # v1 reports "no limit" as a huge page-rounded number


@dataclass(frozen=True)
class Limits:
    version: int | None = None
    memory_limit_bytes: int | None = None
    memory_used_bytes: int | None = None
    cpu_quota: float | None = None  # CPUs' worth of time, e.g. 2.0


def read(root: Path) -> Limits:
    mount = root / "sys" / "fs" / "cgroup"
    paths = _own_paths(root / "proc" / "self" / "cgroup")
    if (mount / "cgroup.controllers").exists():
        base = _inside(mount, paths.get("", "/"))
        return Limits(
            version=2,
            memory_limit_bytes=_number(base / "memory.max"),
            memory_used_bytes=_number(base / "memory.current"),
            cpu_quota=_v2_quota(base / "cpu.max"),
        )
    if (mount / "memory").is_dir() or (mount / "cpu").is_dir():
        memory = _inside(mount / "memory", paths.get("memory", "/"))
        cpu = _inside(mount / "cpu", paths.get("cpu", paths.get("cpu,cpuacct", "/")))
        quota, period = _number(cpu / "cpu.cfs_quota_us"), _number(cpu / "cpu.cfs_period_us")
        return Limits(
            version=1,
            memory_limit_bytes=_number(memory / "memory.limit_in_bytes"),
            memory_used_bytes=_number(memory / "memory.usage_in_bytes"),
            cpu_quota=quota / period if quota and period and quota > 0 else None,
        )
    return Limits()


def _own_paths(path: Path) -> dict[str, str]:
    """Controller -> this process's cgroup path, from /proc/self/cgroup."""
    paths: dict[str, str] = {}
    try:
        for line in path.read_text().splitlines():
            _, controllers, cgroup_path = line.split(":", 2)
            for controller in controllers.split(","):
                paths[controller] = cgroup_path
            if "," in controllers:
                paths[controllers] = cgroup_path
    except (OSError, ValueError):
        pass
    return paths


def _inside(mount: Path, cgroup_path: str) -> Path:
    """The process's own cgroup folder when mounted, else the mount root (a container's view)."""
    nested = mount / cgroup_path.lstrip("/")
    return nested if cgroup_path not in ("", "/") and nested.is_dir() else mount


def _number(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if not text.lstrip("-").isdigit():
        return None  # "max"
    value = int(text)
    return None if value >= UNLIMITED else value


def _v2_quota(path: Path) -> float | None:
    try:
        quota, period = path.read_text().split()
    except (OSError, ValueError):
        return None
    return None if quota == "max" else int(quota) / int(period)
