"""Thermal zones and battery/AC from /sys/class."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ThermalZone:
    name: str
    celsius: float | None


@dataclass(frozen=True)
class Battery:
    percent: float | None
    charging: bool | None
    on_ac: bool | None


def thermal_zones(root: Path) -> tuple[ThermalZone, ...]:
    zones = []
    for zone in sorted((root / "sys" / "class" / "thermal").glob("thermal_zone*")):
        milli = _read(zone / "temp")
        celsius = int(milli) / 1000 if milli.lstrip("-").isdigit() else None
        zones.append(ThermalZone(_read(zone / "type") or zone.name, celsius))
    return tuple(zones)


def battery(root: Path) -> Battery | None:
    supplies = sorted((root / "sys" / "class" / "power_supply").glob("*"))
    batteries = [s for s in supplies if _read(s / "type") == "Battery"]
    mains = [s for s in supplies if _read(s / "type") in ("Mains", "USB")]
    if not batteries:
        return None
    capacity = _read(batteries[0] / "capacity")
    status = _read(batteries[0] / "status")
    return Battery(
        percent=float(capacity) if capacity.isdigit() else None,
        charging=status == "Charging" if status else None,
        on_ac=any(_read(m / "online") == "1" for m in mains) if mains else None,
    )


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""
