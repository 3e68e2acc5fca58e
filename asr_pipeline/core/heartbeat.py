"""A heartbeat: something done every few seconds on a daemon thread while a block of work runs, to show the work
lives (a training's work directory touched, a command's runs tagged with the time)."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Callable, Iterator


@contextmanager
def beating(every_s: float, beat: Callable[[], None], name: str, exit_wait_s: float | None = None) -> Iterator[None]:
    """Calls beat() every every_s seconds (not at once) until the block ends. exit_wait_s: how long the block's end
    waits for a beat in progress (None: as long as it takes)."""
    stop = threading.Event()

    def run():
        while not stop.wait(every_s):
            beat()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(exit_wait_s)
