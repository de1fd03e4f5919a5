"""HardwareInventory: what the gateway has, read from a root path (tests point it at a fixture).

Every probe degrades to "unknown" (None / empty) instead of failing start-up.
"""

from __future__ import annotations

import platform
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agent.hardware import accelerators, cgroup, cpu, power


@dataclass(frozen=True)
class HardwareInventory:
    cpu: cpu.CpuInfo
    memory_total_bytes: int | None
    memory_available_bytes: int | None
    container: cgroup.Limits
    gpus: tuple[accelerators.Gpu, ...] = ()
    npus: tuple[accelerators.Npu, ...] = ()
    thermal: tuple[power.ThermalZone, ...] = ()
    battery: power.Battery | None = None
    system: str = "Linux"

    @property
    def usable_cores(self) -> int:
        """Physical cores this process may keep busy (a container's CPU quota caps it)."""
        cores = self.cpu.physical_cores or self.cpu.logical_cores or 1
        if self.container.cpu_quota is not None:
            cores = min(cores, max(1, int(self.container.cpu_quota)))
        return cores

    @property
    def usable_memory_bytes(self) -> int | None:
        return _smaller(self.memory_total_bytes, self.container.memory_limit_bytes)

    @property
    def available_memory_bytes(self) -> int | None:
        return _smaller(self.memory_available_bytes, self.container.memory_room_bytes)

    @property
    def max_temperature_c(self) -> float | None:
        temps = [z.celsius for z in self.thermal if z.celsius is not None]
        return max(temps) if temps else None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["usable_cores"] = self.usable_cores
        data["usable_memory_bytes"] = self.usable_memory_bytes
        data["available_memory_bytes"] = self.available_memory_bytes
        return data


def detect(root: Path = Path("/")) -> HardwareInventory:
    live = root == Path("/")
    meminfo = _meminfo(root / "proc" / "meminfo")
    gpus = accelerators.gpus(root)
    if live and shutil.which("nvidia-smi"):
        gpus = accelerators.merge_nvidia_smi(gpus, _nvidia_smi())
    return HardwareInventory(
        cpu=cpu.read(root, live=live),
        memory_total_bytes=meminfo.get("MemTotal"),
        memory_available_bytes=meminfo.get("MemAvailable"),
        container=cgroup.read(root),
        gpus=gpus,
        npus=accelerators.npus(root),
        thermal=power.thermal_zones(root),
        battery=power.battery(root),
        system=platform.system() if live else "Linux",
    )


def available_memory_bytes(root: Path, container: cgroup.Limits) -> int | None:
    """Memory this process can take now (the governor samples it): the host's MemAvailable,
    capped by the cgroup's room under memory.max / memory.high."""
    host = _meminfo(root / "proc" / "meminfo").get("MemAvailable")
    return _smaller(host, container.memory_room_bytes)


def _meminfo(path: Path) -> dict[str, int]:
    values: dict[str, int] = {}
    try:
        for line in path.read_text().splitlines():
            name, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                values[name] = int(parts[0]) * (1024 if parts[-1] == "kB" else 1)
    except OSError:
        pass
    return values


def _nvidia_smi() -> list[dict[str, str]]:
    query = "name,memory.total,driver_version"
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    rows = []
    for line in out.strip().splitlines():
        name, memory, driver = (part.strip() for part in line.split(","))
        rows.append({"name": name, "memory_mib": memory, "driver": driver})
    return rows


def _smaller(a: int | None, b: int | None) -> int | None:
    present = [v for v in (a, b) if v is not None]
    return min(present) if present else None
