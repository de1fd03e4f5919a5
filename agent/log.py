"""structlog configuration: JSON lines in production, a readable console on a TTY.

Configuration lives here; modules only call `structlog.get_logger()`. Prompts and
completions are never passed to a logger unless `log_prompts` is on (see `prompt_fields`).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

_log_prompts = False


def configure(level: str = "info", fmt: str = "auto", log_prompts: bool = False) -> None:
    global _log_prompts
    _log_prompts = log_prompts
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def prompt_fields(**fields: Any) -> dict[str, Any]:
    """Prompt/completion text to attach to a log event: empty unless `log_prompts` is on."""
    return fields if _log_prompts else {}


def prompts_logged() -> bool:
    return _log_prompts
