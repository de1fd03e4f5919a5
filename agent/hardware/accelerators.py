"""GPUs and NPUs: NVIDIA via /proc/driver/nvidia (and nvidia-smi), AMD/Intel via DRM,
Intel NPU via /dev/accel, Qualcomm NPU via its FastRPC nodes or the SoC id."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

PCI_VENDORS = {"0x10de": "nvidia", "0x1002": "amd", "0x8086": "intel"}
DISPLAY = {"nvidia": "NVIDIA", "amd": "AMD", "intel": "Intel"}
QUALCOMM_SOCS = ("qcs", "qcm", "sc8", "sm8", "sa8", "snapdragon")


@dataclass(frozen=True)
class Gpu:
    vendor: str
    name: str
    source: str
    memory_mib: int | None = None


@dataclass(frozen=True)
class Npu:
    vendor: str
    name: str
    device: str


def gpus(root: Path) -> tuple[Gpu, ...]:
    found = list(_nvidia_proc(root))
    for card in sorted((root / "sys" / "class" / "drm").glob("card[0-9]*")):
        if "-" in card.name:
            continue  # connectors such as card0-HDMI-A-1
        vendor = PCI_VENDORS.get(_read(card / "device" / "vendor"), "")
        if not vendor or (vendor == "nvidia" and found):
            continue
        name = _read(card / "device" / "product_name") or f"{DISPLAY[vendor]} GPU ({card.name})"
        found.append(Gpu(vendor, name, "drm"))
    return tuple(found)


def merge_nvidia_smi(found: tuple[Gpu, ...], rows: list[dict[str, str]]) -> tuple[Gpu, ...]:
    """Add memory sizes (and names) from nvidia-smi to the NVIDIA GPUs found in /proc."""
    nvidia = [g for g in found if g.vendor == "nvidia"]
    others = [g for g in found if g.vendor != "nvidia"]
    merged = [
        replace(gpu, name=row["name"], memory_mib=int(row["memory_mib"]), source="nvidia-smi")
        if row["memory_mib"].isdigit()
        else gpu
        for gpu, row in zip(nvidia, rows, strict=False)
    ]
    return (*merged, *nvidia[len(merged) :], *others)


def npus(root: Path) -> tuple[Npu, ...]:
    found = []
    for node in sorted((root / "dev" / "accel").glob("accel*")):
        vendor_file = root / "sys" / "class" / "accel" / node.name / "device" / "vendor"
        vendor = PCI_VENDORS.get(_read(vendor_file), "intel")
        found.append(Npu(vendor, f"{DISPLAY.get(vendor, vendor)} NPU", str(node.relative_to(root))))
    soc = " ".join(
        _read(root / "sys" / "devices" / "soc0" / name).lower() for name in ("family", "machine")
    )
    fastrpc = sorted((root / "dev").glob("fastrpc-*dsp*"))
    if fastrpc or any(tag in soc for tag in QUALCOMM_SOCS):
        device = str(fastrpc[0].relative_to(root)) if fastrpc else "soc0"
        found.append(Npu("qualcomm", f"Qualcomm Hexagon NPU ({soc.strip() or 'fastrpc'})", device))
    return tuple(found)


def _nvidia_proc(root: Path) -> list[Gpu]:
    found = []
    for info in sorted((root / "proc" / "driver" / "nvidia" / "gpus").glob("*/information")):
        fields = dict(line.split(":", 1) for line in _read(info).splitlines() if ":" in line)
        found.append(Gpu("nvidia", fields.get("Model", "NVIDIA GPU").strip(), "proc"))
    return found


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""
