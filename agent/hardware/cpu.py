"""CPU: vendor, model, architecture, the ISA features ONNX Runtime kernels use, core counts."""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

# /proc/cpuinfo flag -> feature name, per architecture family.
X86_FEATURES = {
    "avx2": "avx2",
    "avx512f": "avx512",
    "avx_vnni": "avx_vnni",
    "avx512_vnni": "avx512_vnni",
    "amx_tile": "amx",
}
ARM_FEATURES = {"asimd": "neon", "asimddp": "dotprod", "i8mm": "i8mm", "sve": "sve"}
ARM_PARTS = {  # implementer 0x41 (Arm) part numbers seen on gateways
    "0xd03": "Cortex-A53",
    "0xd08": "Cortex-A72",
    "0xd0b": "Cortex-A76",
    "0xd42": "Cortex-A78AE",
    "0xd05": "Cortex-A55",
    "0xd0d": "Cortex-A77",
    "0xd41": "Cortex-A78",
}


@dataclass(frozen=True)
class CpuInfo:
    arch: str
    vendor: str
    model: str
    features: tuple[str, ...]
    logical_cores: int | None
    physical_cores: int | None


def read(root: Path, live: bool = False) -> CpuInfo:
    try:
        text = (root / "proc" / "cpuinfo").read_text()
    except OSError:
        text = ""
    blocks = [_fields(block) for block in text.split("\n\n") if block.strip()]
    processors = [b for b in blocks if "processor" in b]
    first = processors[0] if processors else {}
    board = next((b for b in blocks if "Hardware" in b or "Model" in b), {})
    arch = platform.machine() if live else _arch(first)
    flags = set((first.get("flags") or first.get("Features") or "").split())
    table = X86_FEATURES if "vendor_id" in first else ARM_FEATURES
    features = tuple(sorted({name for flag, name in table.items() if flag in flags}))
    if arch == "aarch64" and "neon" not in features and first:
        features = tuple(sorted({*features, "neon"}))  # NEON is mandatory on AArch64
    return CpuInfo(
        arch=arch,
        vendor=_vendor(first),
        model=first.get("model name") or board.get("Model") or _arm_part(first) or "unknown",
        features=features,
        logical_cores=len(processors) or None,
        physical_cores=_physical_cores(processors),
    )


def _fields(block: str) -> dict[str, str]:
    fields = {}
    for line in block.splitlines():
        name, sep, value = line.partition(":")
        if sep:
            fields[name.strip()] = value.strip()
    return fields


def _arch(first: dict[str, str]) -> str:
    if "vendor_id" in first:
        return "x86_64"
    version = first.get("CPU architecture", "")
    if version == "8":
        return "aarch64"
    if version == "7":
        return "armv7l"
    return "unknown"


def _vendor(first: dict[str, str]) -> str:
    if "vendor_id" in first:
        return {"GenuineIntel": "Intel", "AuthenticAMD": "AMD"}.get(
            first["vendor_id"], first["vendor_id"]
        )
    implementer = first.get("CPU implementer", "")
    return {"0x41": "Arm", "0x51": "Qualcomm", "0x61": "Apple"}.get(
        implementer, implementer or "unknown"
    )


def _arm_part(first: dict[str, str]) -> str | None:
    return ARM_PARTS.get(first.get("CPU part", ""))


def _physical_cores(processors: list[dict[str, str]]) -> int | None:
    if not processors:
        return None
    if "core id" in processors[0]:
        return len({(p.get("physical id", "0"), p["core id"]) for p in processors})
    return len(processors)  # Arm gateway cores have no SMT
