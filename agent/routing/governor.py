"""ResourceGovernor: is the gateway short of memory, CPU, thermal headroom, battery or time?

Each signal has an enter and a leave level (hysteresis) so routing does not flap; the
sampled signals refresh on a timer, the queue wait is judged per request. Readings come
from the hardware probes under a root path that tests point at a recorded tree: the
cgroup (CPU use against its quota, memory.max / memory.high, the working set), /proc
meminfo, /sys thermal and battery; psutil only where the cgroup has no CPU quota.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import psutil

from agent.engine.backend import Load
from agent.hardware import cgroup, power
from agent.hardware.inventory import available_memory_bytes
from agent.settings import GovernorSettings

MIB = 1024 * 1024


@dataclass
class Signal:
    """Short once the value is past `enter`, back to normal only past `leave` (an `enter`
    of 100 % for CPU, say, can never be passed: the signal is off)."""

    name: str
    enter: float
    leave: float
    worse_above: bool
    value: float | None = None
    short: bool = False

    def update(self, value: float | None) -> None:
        self.value = value
        if value is None:
            self.short = False
        elif self.worse_above:
            self.short = value > self.enter if not self.short else value > self.leave
        else:
            self.short = value < self.enter if not self.short else value < self.leave


class SignalState(TypedDict):
    value: float | None
    short: bool


class ResourceGovernor:
    def __init__(
        self,
        limits: GovernorSettings,
        local_load: Callable[[], Load],
        clock: Callable[[], float] = time.monotonic,
    ):
        self.limits = limits
        self.local_load = local_load  # the local backend's queue, read when estimating
        root = limits.hardware_root
        self.root = root
        self.clock = clock  # wall time between cgroup CPU samples
        self._live = Path(root) == Path("/")  # this process is in the cgroup read
        self.memory = Signal("memory", limits.memory_reserve_mb, limits.memory_resume_mb, False)
        self.cpu = Signal("cpu", limits.cpu_enter_percent, limits.cpu_leave_percent, True)
        self.heat = Signal(
            "temperature", limits.temperature_enter_c, limits.temperature_leave_c, True
        )
        self.battery = Signal(
            "battery", limits.battery_enter_percent, limits.battery_leave_percent, False
        )
        self.queue = Signal(
            "latency_budget", limits.latency_budget_s, limits.latency_budget_s * 0.8, True
        )
        self.service_time_s: float | None = None  # moving average of local request time
        self._process = psutil.Process()
        self._cpus = psutil.cpu_count() or 1
        self._cgroup_sample: tuple[float, float] | None = None  # (when, others' CPU seconds)
        self._task: asyncio.Task[None] | None = None

    @property
    def signals(self) -> tuple[Signal, ...]:
        return (self.memory, self.cpu, self.heat, self.battery, self.queue)

    def start(self) -> None:
        psutil.cpu_percent(None)  # the first calls only set the baselines
        self._process.cpu_percent(None)
        self.refresh()
        self._task = asyncio.ensure_future(self._refresh_forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def refresh(self) -> None:
        limits = cgroup.read(self.root)
        available = available_memory_bytes(self.root, limits)
        if available is None and self._live:
            available = psutil.virtual_memory().available  # no /proc/meminfo: not Linux
        self.memory.update(None if available is None else available / MIB)
        self.cpu.update(self._cpu_percent(limits.cpu_quota))
        temps = [z.celsius for z in power.thermal_zones(self.root) if z.celsius is not None]
        self.heat.update(max(temps) if temps else None)
        battery = power.battery(self.root)
        on_battery = battery if battery is not None and battery.on_ac is False else None
        self.battery.update(on_battery.percent if on_battery is not None else None)

    def _cpu_percent(self, quota: float | None) -> float | None:
        """CPU taken by everything but this daemon: our own inference load is judged by the
        queue wait instead, or a busy engine would push every request to the cloud. Under a
        CPU quota that is the cgroup's use (cpu.stat) against the quota, whatever the host's
        other cores do; without one, the host's CPUs are what the daemon competes for."""
        usage_usec = None if quota is None else cgroup.cpu_usage_usec(self.root)
        if quota is None or usage_usec is None:
            self._cgroup_sample = None
            return self._host_cpu_percent()
        own_s = sum(self._process.cpu_times()[:2]) if self._live else 0.0
        now, others_s = self.clock(), usage_usec / 1e6 - own_s
        previous, self._cgroup_sample = self._cgroup_sample, (now, others_s)
        if previous is None or now <= previous[0]:
            return None  # the first sample is the baseline
        return max(0.0, 100 * (others_s - previous[1]) / ((now - previous[0]) * quota))

    def _host_cpu_percent(self) -> float:
        total = psutil.cpu_percent(None)
        own = self._process.cpu_percent(None) / self._cpus
        return max(0.0, total - own)

    def estimated_wait_s(self) -> float:
        """Static batches: a new request waits for the running batch and those queued."""
        load = self.local_load()
        if self.service_time_s is None or load.running == 0:
            return 0.0
        batches_ahead = 1 + math.floor(load.queued / load.batch_slots)
        return batches_ahead * self.service_time_s

    def observe(self, total_s: float) -> None:
        previous = self.service_time_s
        self.service_time_s = total_s if previous is None else 0.7 * previous + 0.3 * total_s

    def shortages(self, request_kv_bytes: int = 0) -> list[str]:
        """Why local should not take this request now (empty: it should)."""
        self.queue.update(self.estimated_wait_s())
        reasons = [s.name for s in self.signals if s.short]
        memory = self.memory.value
        room = None if memory is None else memory - request_kv_bytes / MIB
        if "memory" not in reasons and room is not None and room < self.limits.memory_reserve_mb:
            reasons.append("memory")
        return reasons

    def state(self) -> dict[str, SignalState]:
        return {
            s.name: {"value": None if s.value is None else round(s.value, 2), "short": s.short}
            for s in self.signals
        }

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.limits.interval_s)
            self.refresh()
