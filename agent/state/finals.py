"""MQTT finals kept on disk, so a request redelivered after a crash (kill -9, power cut)
gets the final it was already given instead of running a second time.

Each final is appended and fsynced *before* it is published: if the process dies after
the broker took the final but before the request was acknowledged, the redelivered
request finds it here. The file is rewritten (write-then-rename) without expired entries
at start-up and whenever it has grown to twice what is live.

The writes run on one worker thread of their own (`save`, `rewrite`): an fsync on an SD
card can take tens of milliseconds, which the event loop (HTTP, MQTT keep-alives) must not
wait through. One worker keeps the appends and rewrites in order.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from agent.state.files import atomic_write

Entry = dict[str, Any]  # {"key", "expires", "route": {...}, "payload": {...}}


class FinalsSpool:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lines = 0
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="finals-spool")

    async def save(self, entry: Entry) -> None:
        """`record` on the spool's own thread; returns once the entry is on disk."""
        await asyncio.get_running_loop().run_in_executor(self._writer, self.record, entry)

    async def rewrite(self, live: list[Entry]) -> None:
        """`compact` on the spool's own thread, after the appends before it."""
        await asyncio.get_running_loop().run_in_executor(self._writer, self.compact, live)

    def load(self) -> list[Entry]:
        """The entries that have not expired, oldest first; the file is compacted."""
        now = time.time()
        entries: dict[str, Entry] = {}
        if self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a crash
                if entry.get("expires", 0) > now:
                    entries[entry["key"]] = entry
        live = list(entries.values())
        self.compact(live)
        return live

    def record(self, entry: Entry) -> None:
        """Append one entry durably (fsync) before its final is published."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as file:
            file.write(json.dumps(entry, separators=(",", ":")) + "\n")
            file.flush()
            os.fsync(file.fileno())
        self._lines += 1

    def compaction_due(self, live: int) -> bool:
        return self._lines > 2 * max(live, 64)

    def compact(self, live: list[Entry]) -> None:
        text = "".join(json.dumps(e, separators=(",", ":")) + "\n" for e in live)
        atomic_write(self.path, text.encode())
        self._lines = len(live)
