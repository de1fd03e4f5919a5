"""Execution-provider candidates, ranked NPU > vendor GPU > OpenVINO CPU > CPU (the way
Foundry Local orders variants) and filtered by hardware, installed packages and the
model's variants. Whether a provider really works is only known by loading it: the
engine tries the accepted candidates in order and falls back to CPU."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

import onnxruntime_genai as og

from agent.hardware.inventory import HardwareInventory


@dataclass(frozen=True)
class ProviderSpec:
    name: str  # the settings name
    og_name: str | None  # what og.Config.append_provider takes; None = the default CPU EP
    device: str  # npu | gpu | cpu
    variants: tuple[str, ...]  # manifest variant providers it can load, preferred first
    options: dict[str, str] = field(default_factory=dict)
    threads_option: str | None = None  # the EP runs its own pool, sized by this option

    @property
    def label(self) -> str:
        return (
            self.name
            if self.name == "cpu" or "device_type" not in self.options
            else f"{self.name}:{self.device}"
        )


SPECS = (
    ProviderSpec("qnn", "QNN", "npu", ("qnn",), {"backend_type": "htp"}),
    ProviderSpec(
        "openvino", "OpenVINO", "npu", ("openvino", "cpu"), {"device_type": "NPU"}, "num_of_threads"
    ),
    ProviderSpec("cuda", "cuda", "gpu", ("cuda",)),
    ProviderSpec("dml", "dml", "gpu", ("dml",)),
    ProviderSpec("webgpu", "WebGPU", "gpu", ("webgpu",)),
    ProviderSpec(
        "openvino", "OpenVINO", "gpu", ("openvino", "cpu"), {"device_type": "GPU"}, "num_of_threads"
    ),
    ProviderSpec(
        "openvino", "OpenVINO", "cpu", ("openvino", "cpu"), {"device_type": "CPU"}, "num_of_threads"
    ),
    ProviderSpec("cpu", None, "cpu", ("cpu",)),
)


@dataclass(frozen=True)
class Installed:
    """What the installed packages provide, as far as can be told without loading."""

    cuda: bool = False
    openvino: bool = False
    # The device types the OpenVINO plugin offers on this machine; None: not asked. The
    # plugin installs on any x86-64 machine but may offer no device there (seen on AMD).
    openvino_devices: frozenset[str] | None = None

    @classmethod
    def probe(cls) -> Installed:
        og_dir = Path(og.__file__).parent
        openvino = importlib.util.find_spec("onnxruntime_ep_openvino") is not None
        return cls(
            cuda=any(og_dir.glob("libonnxruntime-genai-cuda.*")),
            openvino=openvino,
            openvino_devices=_openvino_devices() if openvino else None,
        )


def _openvino_devices() -> frozenset[str]:
    """Ask onnxruntime which devices the OpenVINO plugin offers: registering the library
    with onnxruntime-genai succeeds even where it then offers none."""
    import onnxruntime as ort
    import onnxruntime_ep_openvino as openvino

    name = openvino.get_ep_name()
    try:
        ort.register_execution_provider_library(name, openvino.get_library_path())
    except Exception:
        return frozenset()
    return frozenset(
        device.device.type.name for device in ort.get_ep_devices() if device.ep_name == name
    )


@dataclass(frozen=True)
class Candidate:
    spec: ProviderSpec
    accepted: bool
    reason: str
    variant_provider: str | None = None


def rank(
    profile: HardwareInventory, installed: Installed, model_variants: set[str]
) -> list[Candidate]:
    """Every provider in rank order, each accepted or rejected with the reason."""
    ranked = []
    for spec in SPECS:
        problem = _hardware_problem(spec, profile) or _software_problem(spec, installed)
        variant = next((v for v in spec.variants if v in model_variants), None)
        if problem is None and variant is None:
            problem = f"the model has no {'/'.join(spec.variants)} variant"
        reason = problem or f"{_hardware_reason(spec, profile)}; variant {variant}"
        ranked.append(Candidate(spec, problem is None, reason, variant))
    return ranked


def _hardware_problem(spec: ProviderSpec, profile: HardwareInventory) -> str | None:
    vendors_gpu = {g.vendor for g in profile.gpus}
    vendors_npu = {n.vendor for n in profile.npus}
    match (spec.name, spec.device):
        case ("qnn", _) if "qualcomm" not in vendors_npu:
            return "no Qualcomm NPU"
        case ("openvino", "npu") if "intel" not in vendors_npu:
            return "no Intel NPU"
        case ("cuda", _) if "nvidia" not in vendors_gpu:
            return "no NVIDIA GPU"
        case ("dml", _) if profile.system != "Windows":
            return "DirectML is Windows-only"
        case ("dml" | "webgpu", _) if not profile.gpus:
            return "no GPU"
        case ("openvino", "gpu") if "intel" not in vendors_gpu:
            return "no Intel GPU"
        case ("openvino", "cpu") if profile.cpu.arch != "x86_64":
            return f"the OpenVINO plugin wheel is x86_64-only (CPU is {profile.cpu.arch})"
    return None


def _software_problem(spec: ProviderSpec, installed: Installed) -> str | None:
    if spec.name == "cuda" and not installed.cuda:
        return "onnxruntime-genai-cuda is not installed"
    if spec.name == "openvino" and not installed.openvino:
        return "onnxruntime-ep-openvino is not installed"
    devices = installed.openvino_devices
    if spec.name == "openvino" and devices is not None and spec.device.upper() not in devices:
        return f"the OpenVINO plugin offers no {spec.device.upper()} device on this machine"
    return None


def _hardware_reason(spec: ProviderSpec, profile: HardwareInventory) -> str:
    if spec.device == "npu":
        return f"NPU: {', '.join(n.name for n in profile.npus)}"
    if spec.device == "gpu" and profile.gpus:
        return f"GPU: {', '.join(g.name for g in profile.gpus)}"
    return f"CPU: {profile.cpu.model} ({', '.join(profile.cpu.features) or 'baseline ISA'})"


_registered: set[str] = set()


def register_plugin(spec: ProviderSpec) -> None:
    """Plugin EPs (OpenVINO) must be registered with onnxruntime-genai before loading."""
    if spec.name != "openvino" or spec.name in _registered:
        return
    import onnxruntime_ep_openvino as openvino

    og.register_execution_provider_library(openvino.get_ep_name(), openvino.get_library_path())
    _registered.add(spec.name)
