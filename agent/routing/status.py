"""Parts of the operations document (`/v1/agent/status`) that describe the local engine and
the routing state, built from the components themselves."""

from __future__ import annotations

from typing import Any

from agent.engine.local import LocalEngine
from agent.engine.select import Selection
from agent.models.profiles import ModelNames
from agent.routing.cloud_pool import CloudPool
from agent.routing.governor import ResourceGovernor
from agent.routing.router import Router
from agent.telemetry.metrics import Metrics, totals_by


def local_status(engine: LocalEngine, names: ModelNames, selection: Selection) -> dict[str, Any]:
    """`selection` is the one that built `engine` (else, after a failed model switch, the
    provider choice is not shown: it was the other model's)."""
    info = engine.info
    return {
        "model": {
            "name": info.name,
            "variant": info.variant,
            "precision": info.precision,
            "path": str(info.path),
            "context_length": info.context_length,
            "max_length": engine.max_length,
            "kv_cache_bytes_per_token": info.kv_bytes_per_token,
            "load_time_s": round(engine.load_time_s, 3),
            "names": names.listed(),
        },
        "provider": engine.provider,
        "provider_attempts": [
            {"provider": a.provider, "error": a.error} for a in engine.load_attempts
        ],
        "provider_choice": (
            selection.choice.to_dict() if selection.plans is engine.plans else None
        ),
        "threads": engine.threads,
        "queue": {
            "depth": engine.queue_depth,
            "running": engine.running,
            "max_queue": engine.settings.max_queue,
            "max_batch": engine.settings.max_batch,
        },
        "engine_steps": engine.steps,
        "finished": dict(engine.finished),
        "batches": {str(size): count for size, count in sorted(engine.batches.items())},
        "generator_path": path.figures() if (path := engine.generator_path) else None,
    }


def routing_status(
    router: Router, governor: ResourceGovernor, cloud: CloudPool, metrics: Metrics
) -> dict[str, Any]:
    return {
        "default_route": router.default_route,
        "signals": governor.state(),
        "estimated_wait_s": round(governor.estimated_wait_s(), 3),
        "service_time_s": governor.service_time_s,
        "breakers": cloud.states(),
        "requests": totals_by(metrics.requests, "backend"),
        "fallbacks": totals_by(metrics.fallbacks, "reason"),
    }
