"""Helpers shared by the Python tests: a recorder for batches, bounded waits, subprocess runs.

No test sleeps to synchronise: waits poll a condition up to a generous deadline.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

#: The longest any test waits for something that should happen (slow shared machines).
PATIENCE = 20.0


def wait_until(condition: Callable[[], object], what: str, timeout: float = PATIENCE) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        time.sleep(0.001)


class Recorder:
    """A dispatch function that records each batch (the list it got, and when)."""

    def __init__(self, fail: Callable[[list[Any]], bool] | None = None) -> None:
        self.batches: list[list[Any]] = []
        self.times: list[float] = []
        self.threads: list[int] = []
        self.drops: list[tuple[list[Any], str]] = []
        self.errors: list[tuple[BaseException, list[Any]]] = []
        self.fail = fail
        self.lock = threading.Lock()

    def __call__(self, entries: list[Any]) -> None:
        with self.lock:
            self.times.append(time.monotonic())
            self.threads.append(threading.get_ident())
            self.batches.append(list(entries))
        if self.fail is not None and self.fail(entries):
            raise RuntimeError("collector down")

    def on_drop(self, entries: list[Any], reason: str) -> None:
        with self.lock:
            self.drops.append((list(entries), reason))

    def on_error(self, exc: BaseException, entries: list[Any]) -> None:
        with self.lock:
            self.errors.append((exc, list(entries)))

    @property
    def delivered(self) -> list[Any]:
        with self.lock:
            return [e for batch in self.batches for e in batch]

    def dropped(self, reason: str) -> list[Any]:
        with self.lock:
            return [e for entries, r in self.drops if r == reason for e in entries]


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


class Gate:
    """Holds dispatch calls until opened."""

    def __init__(self) -> None:
        self.opened = threading.Event()
        self.waiting = threading.Event()

    def __call__(self, entries: list[Any]) -> None:
        self.waiting.set()
        if not self.opened.wait(PATIENCE * 3):
            raise AssertionError("the gate was never opened")

    def open(self) -> None:
        self.opened.set()


def run_python(
    code: str, timeout: float = 60.0, env: dict[str, str] | None = None, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    """Runs `code` in a fresh interpreter (this one's), with a hard timeout."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        **kwargs,
    )


#: Lines that must never appear in a subprocess's output.
CRASH_MARKERS = ("panicked", "PanicException", "Fatal Python error", "Segmentation fault", "core dumped")
