"""Where a server's memory per connection goes: tracemalloc snapshots on SIGUSR1.

Imported by the apps when BENCH_TRACEMALLOC names an output file. The first SIGUSR1 takes a
snapshot; each later one writes the allocations grown since the first, by line, to that file.
"""

from __future__ import annotations

import os
import signal
import tracemalloc
from pathlib import Path
from typing import Any

_first: list[tracemalloc.Snapshot] = []


def _on_signal(signum: int, frame: Any) -> None:
    snapshot = tracemalloc.take_snapshot()
    if not _first:
        _first.append(snapshot)
        return
    stats = snapshot.compare_to(_first[0], "lineno")
    total = sum(s.size_diff for s in stats)
    lines = [f"grown by {total / 1024:.0f} KiB in Python allocations", ""]
    lines += [f"{s.size_diff / 1024:10.1f} KiB {s.count_diff:8d} blocks  {s.traceback}" for s in stats[:40]]
    Path(os.environ["BENCH_TRACEMALLOC"]).write_text("\n".join(lines) + "\n")


def install() -> None:
    if os.environ.get("BENCH_TRACEMALLOC"):
        tracemalloc.start(1)
        signal.signal(signal.SIGUSR1, _on_signal)
