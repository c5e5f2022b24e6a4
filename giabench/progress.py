"""Progress of a suite and of every running cell, wherever the cells run.

A running cell reports through a ``Reporter``: ``begin(total)`` once its attack is built (its planned budget, None
when unknown), then ``advance(steps)`` as the attack spends it, then ``end()``. The driver's ``Board`` draws a bar
for the suite and one per running cell (tqdm). In-process a reporter hands its events to the board directly; in a
worker process or a Ray task it sends them through a queue whose events a thread of the driver hands to the board
(``relay``), its steps batched to one event per ``FLUSH_S`` seconds, so a long cell shows its iterations whatever
executor runs it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from tqdm import tqdm

FLUSH_S = 0.5  # a worker's reporter sends its accumulated steps at most this often

Event = tuple  # ("begin", key, label, total) | ("advance", key, steps) | ("end", key)


class Reporter:
    """One cell's progress, sent as events to ``send``; steps are batched over ``every`` seconds (0: each sent)."""

    def __init__(self, send: Callable[[Event], None], key: str, label: str, every: float = 0.0):
        self.send, self.key, self.label, self.every = send, key, label, every
        self.pending, self.sent_at = 0, time.monotonic()

    def begin(self, total: int | None) -> None:
        self.send(("begin", self.key, self.label, total))

    def advance(self, steps: int) -> None:
        self.pending += steps
        if time.monotonic() - self.sent_at >= self.every:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.send(("advance", self.key, self.pending))
        self.pending, self.sent_at = 0, time.monotonic()

    def end(self) -> None:
        self.flush()
        self.send(("end", self.key))


def reported(run, cell, env, send: Callable[[Event], None] | None, every: float = FLUSH_S):
    """``run(cell, env, reporter)`` with a reporter sending to ``send`` (``run(cell, env)`` when None)."""
    if send is None:
        return run(cell, env)
    reporter = Reporter(send, cell.id, cell.label, every)
    try:
        return run(cell, env, reporter)
    finally:
        reporter.end()


class Board:
    """The suite's bar (``total`` cells, ``done`` of them already stored) and a bar for each running cell, on the
    lines below it; safe to drive from the relay thread and the driver together."""

    def __init__(self, total: int, done: int, title: str, enabled: bool = True):
        self.enabled = enabled
        self.lock = threading.Lock()
        self.suite = tqdm(total=total, initial=done, desc=title, unit="cell", disable=not enabled, position=0)
        self.cells: dict[str, tuple[tqdm, int]] = {}

    def handle(self, event: Event) -> None:
        kind, key, *rest = event
        with self.lock:
            if kind == "begin":
                label, total = rest
                taken = {line for _, line in self.cells.values()}
                line = next(n for n in range(1, len(taken) + 2) if n not in taken)
                self.cells[key] = (tqdm(total=total or None, desc=label, unit="it", leave=False, position=line,
                                        disable=not self.enabled), line)
            elif kind == "advance" and key in self.cells:
                self.cells[key][0].update(rest[0])
            elif kind == "end" and key in self.cells:
                self.cells.pop(key)[0].close()

    def finished(self) -> None:
        """One more cell stored."""
        with self.lock:
            self.suite.update(1)

    def close(self) -> None:
        with self.lock:
            for bar, _ in self.cells.values():
                bar.close()
            self.cells.clear()
            self.suite.close()


def relay(get: Callable[[], Event | None], board: Board) -> threading.Thread:
    """A daemon thread handing each event from ``get`` (a queue's) to ``board`` until ``get`` returns None."""

    def loop() -> None:
        while (event := get()) is not None:
            board.handle(event)

    thread = threading.Thread(target=loop, name="giabench-progress", daemon=True)
    thread.start()
    return thread
