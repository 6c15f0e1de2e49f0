"""A third process that publishes: ``python -m tests.realtime_publisher GROUP COUNT [INTERVAL]``.

Sends ``{"n": 0}`` ... ``{"n": COUNT-1}`` to GROUP with ``broadcast_sync`` over the configured backend,
``INTERVAL`` seconds apart (the pace of a real producer, so a server restart falls mid-stream); a
publish that fails while the broker or server is away is retried, so every message is sent once.
"""

from __future__ import annotations

import sys
import time

import django


def main() -> None:
    django.setup()
    from tether import BackendUnavailable, broadcast_sync

    group, count = sys.argv[1], int(sys.argv[2])
    interval = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
    for n in range(count):
        while True:
            try:
                broadcast_sync(group, {"n": n})
                break
            except BackendUnavailable:
                continue
        if interval:
            time.sleep(interval)  # pacing a producer, not waiting for state
    print("published", count, flush=True)


if __name__ == "__main__":
    main()
