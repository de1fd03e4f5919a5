"""HardwareInventory on recorded boards (tests/fixtures/boards) and on this machine, and the
provider ranking each one gets."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from agent.hardware.inventory import detect
from agent.hardware.providers import Installed, rank
from tests.conftest import REPO

BOARDS = Path(__file__).parent / "fixtures" / "boards"
GIB = 1024**3
EVERYTHING = Installed(cuda=True, openvino=True)
PHI4_VARIANTS = {"cpu", "cuda", "dml"}  # the Phi-4-mini ONNX repository's layout


def accepted(root: Path, installed: Installed = EVERYTHING, variants=PHI4_VARIANTS) -> list[str]:
    return [c.spec.label for c in rank(detect(root), installed, variants) if c.accepted]


def test_raspberry_pi_5() -> None:
    profile = detect(BOARDS / "rpi5")
    assert profile.cpu.arch == "aarch64"
    assert profile.cpu.model == "Raspberry Pi 5 Model B Rev 1.0"
    assert profile.cpu.vendor == "Arm"
    assert profile.cpu.features == ("dotprod", "neon")
    assert (profile.cpu.physical_cores, profile.cpu.logical_cores) == (4, 4)
    assert 7.5 * GIB < profile.usable_memory_bytes < 8 * GIB
    assert profile.gpus == () and profile.npus == ()
    assert profile.max_temperature_c == pytest.approx(52.35)
    assert profile.container.version == 2 and profile.container.memory_limit_bytes is None
    assert profile.battery is None
    assert accepted(BOARDS / "rpi5") == ["cpu"]
    reasons = {c.spec.label: c.reason for c in rank(profile, EVERYTHING, PHI4_VARIANTS)}
    assert reasons["openvino:cpu"] == "the OpenVINO plugin wheel is x86_64-only (CPU is aarch64)"


def test_jetson_orin_nano() -> None:
    profile = detect(BOARDS / "jetson-orin-nano")
    assert profile.cpu.model == "Cortex-A78AE"
    assert profile.cpu.physical_cores == 6
    assert [(g.vendor, g.name) for g in profile.gpus] == [("nvidia", "Orin (nvgpu)")]
    assert profile.container.memory_limit_bytes == 6 * GIB
    assert profile.usable_memory_bytes == 6 * GIB  # the service's limit beats the board's RAM
    assert profile.available_memory_bytes == 5 * GIB
    assert profile.max_temperature_c == pytest.approx(48.5)
    assert accepted(BOARDS / "jetson-orin-nano") == ["cuda", "cpu"]
    without_cuda = rank(profile, Installed(), PHI4_VARIANTS)
    cuda = next(c for c in without_cuda if c.spec.name == "cuda")
    assert not cuda.accepted and cuda.reason == "onnxruntime-genai-cuda is not installed"
    no_variant = next(c for c in rank(profile, EVERYTHING, {"cpu"}) if c.spec.name == "cuda")
    assert no_variant.reason == "the model has no cuda variant"


def test_intel_core_ultra_with_npu() -> None:
    profile = detect(BOARDS / "core-ultra-npu")
    cpu = profile.cpu
    assert (cpu.vendor, cpu.arch, cpu.model) == (
        "Intel",
        "x86_64",
        "Intel(R) Core(TM) Ultra 7 155H",
    )
    assert cpu.features == ("avx2", "avx_vnni")
    assert (cpu.physical_cores, cpu.logical_cores) == (16, 22)
    assert [(n.vendor, n.device) for n in profile.npus] == [("intel", "dev/accel/accel0")]
    assert [g.vendor for g in profile.gpus] == ["intel"]
    assert profile.battery.percent == 87 and profile.battery.on_ac is False
    assert profile.battery.charging is False
    assert accepted(BOARDS / "core-ultra-npu") == [
        "openvino:npu",
        "openvino:gpu",
        "openvino:cpu",
        "cpu",
    ]
    assert accepted(BOARDS / "core-ultra-npu", Installed()) == ["cpu"]
    # Installed, but offering only its CPU device here: the NPU and GPU are not tried.
    cpu_only = Installed(openvino=True, openvino_devices=frozenset({"CPU"}))
    assert accepted(BOARDS / "core-ultra-npu", cpu_only) == ["openvino:cpu", "cpu"]
    offers_none = Installed(openvino=True, openvino_devices=frozenset())
    assert accepted(BOARDS / "core-ultra-npu", offers_none) == ["cpu"]


def test_x86_server_in_a_small_container() -> None:
    profile = detect(BOARDS / "x86-container")
    assert profile.cpu.vendor == "AMD" and profile.cpu.features == ("avx2",)
    assert (profile.cpu.physical_cores, profile.cpu.logical_cores) == (32, 64)
    assert profile.memory_total_bytes > 250 * GIB  # what psutil would say: the host
    assert profile.container.cpu_quota == 2.0
    assert profile.usable_cores == 2
    assert profile.usable_memory_bytes == 4 * GIB
    assert profile.available_memory_bytes == int(3.5 * GIB)
    assert accepted(BOARDS / "x86-container") == ["openvino:cpu", "cpu"]


def test_this_machine_read_live() -> None:
    profile = detect()
    assert profile.cpu.arch == platform.machine()
    assert profile.cpu.logical_cores == os.cpu_count()
    assert profile.memory_total_bytes == pytest.approx(psutil.virtual_memory().total, rel=0.01)
    assert 1 <= profile.usable_cores <= os.cpu_count()
    labels = [c.spec.label for c in rank(profile, Installed.probe(), {"cpu"}) if c.accepted]
    assert labels[-1] == "cpu"


def test_a_broken_tree_degrades_to_unknown(tmp_path: Path) -> None:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "cpuinfo").write_text("garbage without fields\n\n:::\n")
    (tmp_path / "sys" / "fs" / "cgroup").mkdir(parents=True)
    (tmp_path / "sys" / "fs" / "cgroup" / "cgroup.controllers").write_text("cpu memory\n")
    (tmp_path / "sys" / "fs" / "cgroup" / "cpu.max").write_text("nonsense\n")
    profile = detect(tmp_path)
    assert profile.cpu.arch == "unknown" and profile.cpu.logical_cores is None
    assert profile.memory_total_bytes is None and profile.container.cpu_quota is None
    assert accepted(tmp_path) == ["cpu"]


@pytest.mark.parametrize("board", ["rpi5", "jetson-orin-nano", "core-ultra-npu", "x86-container"])
def test_detect_command_explains_every_rejection(board: str) -> None:
    def detect_cli(*extra: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "agent", "detect", "--root", str(BOARDS / board), *extra],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return result.stdout

    table = detect_cli()
    assert "rank" in table and "reject" in table
    data = json.loads(detect_cli("--json"))
    providers = data["providers"]
    assert providers[-1]["provider"] == "cpu" and providers[-1]["accepted"]
    assert all(p["reason"] for p in providers)
    for provider in providers:
        assert provider["provider"] in table
