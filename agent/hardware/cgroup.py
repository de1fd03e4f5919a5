"""Container limits from cgroup v2 (or v1): they override host figures when smaller."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

UNLIMITED = 1 << 60  # v1 reports "no limit" as a huge page-rounded number


@dataclass(frozen=True)
class Limits:
    version: int | None = None
    memory_limit_bytes: int | None = None  # memory.max, or memory.high where that is lower
    memory_used_bytes: int | None = None  # the working set: usage less inactive_file
    cpu_quota: float | None = None  # CPUs' worth of time, e.g. 2.0

    @property
    def memory_room_bytes(self) -> int | None:
        """What the cgroup still lets this process take before reclaim throttles it."""
        if self.memory_limit_bytes is None:
            return None
        return self.memory_limit_bytes - (self.memory_used_bytes or 0)


def read(root: Path) -> Limits:
    base = _v2_own(root)
    if base is not None:
        limit, high = _number(base / "memory.max"), _number(base / "memory.high")
        return Limits(
            version=2,
            memory_limit_bytes=min((v for v in (limit, high) if v is not None), default=None),
            memory_used_bytes=_working_set(
                base / "memory.current", base / "memory.stat", "inactive_file"
            ),
            cpu_quota=_v2_quota(base / "cpu.max"),
        )
    mount = root / "sys" / "fs" / "cgroup"
    paths = _own_paths(root / "proc" / "self" / "cgroup")
    if (mount / "memory").is_dir() or (mount / "cpu").is_dir():
        memory = _inside(mount / "memory", paths.get("memory", "/"))
        cpu = _inside(mount / "cpu", paths.get("cpu", paths.get("cpu,cpuacct", "/")))
        quota, period = _number(cpu / "cpu.cfs_quota_us"), _number(cpu / "cpu.cfs_period_us")
        return Limits(
            version=1,
            memory_limit_bytes=_number(memory / "memory.limit_in_bytes"),
            memory_used_bytes=_working_set(
                memory / "memory.usage_in_bytes", memory / "memory.stat", "total_inactive_file"
            ),
            cpu_quota=quota / period if quota and period and quota > 0 else None,
        )
    return Limits()


def cpu_usage_usec(root: Path) -> int | None:
    """CPU time used by this process's cgroup v2 so far (cpu.stat usage_usec), or None."""
    base = _v2_own(root)
    return None if base is None else _stat(base / "cpu.stat").get("usage_usec")


def _v2_own(root: Path) -> Path | None:
    """This process's cgroup v2 folder, or None where the hierarchy is not v2."""
    mount = root / "sys" / "fs" / "cgroup"
    if not (mount / "cgroup.controllers").exists():
        return None
    return _inside(mount, _own_paths(root / "proc" / "self" / "cgroup").get("", "/"))


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


def _stat(path: Path) -> dict[str, int]:
    """A flat-keyed cgroup file (memory.stat, cpu.stat): name -> value."""
    values: dict[str, int] = {}
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if value.strip().isdigit():
                values[name] = int(value)
    except OSError:
        pass
    return values


def _working_set(usage: Path, stat: Path, inactive_key: str) -> int | None:
    """Usage less the inactive page cache the kernel reclaims before it would OOM-kill, as
    the kubelet counts it: a cgroup that has read a large model file is not full."""
    used = _number(usage)
    if used is None:
        return None
    return max(0, used - _stat(stat).get(inactive_key, 0))


def _v2_quota(path: Path) -> float | None:
    try:
        quota, period = path.read_text().split()
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError, ZeroDivisionError):
        return None
