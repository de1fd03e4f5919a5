"""The MQTT finals spool writes (and fsyncs) off the event loop, in order."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import pytest

from agent.state.finals import FinalsSpool

ENTRY = {"key": "devices/a/replies\x001", "expires": 4e9, "route": {}, "payload": {"n": 1}}


async def test_a_slow_fsync_does_not_stop_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An fsync that takes as long as a stalled SD card's: it waits (up to 10 s) until the
    event loop has run something else. On the loop's own thread that never happens."""
    loop_ran = threading.Event()
    synced_on: list[threading.Thread] = []
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        loop_ran.wait(10)
        synced_on.append(threading.current_thread())
        real_fsync(fd)

    monkeypatch.setattr("agent.state.finals.os.fsync", slow_fsync)
    spool = FinalsSpool(tmp_path / "finals.jsonl")
    save = asyncio.ensure_future(spool.save(ENTRY))
    asyncio.get_running_loop().call_soon(loop_ran.set)
    await save
    assert synced_on and synced_on[0] is not threading.current_thread()
    assert loop_ran.is_set() and spool.load() == [ENTRY]


async def test_saves_and_rewrites_stay_in_order(tmp_path: Path) -> None:
    spool = FinalsSpool(tmp_path / "finals.jsonl")
    entries = [{**ENTRY, "key": f"t\x00{n}", "payload": {"n": n}} for n in range(20)]
    await asyncio.gather(*(spool.save(e) for e in entries[:10]))
    await spool.rewrite(entries[:5])
    for entry in entries[10:]:
        await spool.save(entry)
    assert [e["key"] for e in spool.load()] == [e["key"] for e in entries[:5] + entries[10:]]
