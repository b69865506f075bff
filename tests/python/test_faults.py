"""Faults in the dispatch function (issue 5, check 5): it raises an ordinary exception,
``SystemExit`` or ``KeyboardInterrupt`` (sync, and ``async def`` on a private loop or on the
app's loop), or it blocks until released, or forever.

What must hold: the worker survives and goes on delivering; the counts are exact (every accepted
entry is delivered once or handed once to ``on_drop``, and ``stats`` say the same); ``flush`` and
``close`` with a deadline return False on time (no sooner than the deadline, and within a
generous bound after it); the handle stays usable (``stats`` readable, ``enqueue`` after
``close`` refused with False, as documented); and the interpreter still exits, with its own
exit code, however stuck the dispatch function is.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from background_dispatcher import BackgroundDispatcher, DispatcherStats
from conftest import CRASH_MARKERS, PATIENCE, run_python, wait_until

#: How late a call with a deadline may return (shared, loaded machines): generous on purpose,
#: this checks "returns on time instead of waiting for the stuck batch", not speed.
LATE = 5.0

#: The exceptions a dispatch function raises in these tests.
KINDS: dict[str, Callable[[], BaseException]] = {
    "ValueError": lambda: ValueError("collector down"),
    "SystemExit": lambda: SystemExit(3),
    "KeyboardInterrupt": KeyboardInterrupt,
}

#: sync: a plain function; async-private: ``async def``, created outside any event loop (its
#: batches run on the dispatcher's private loop); async-app: ``async def`` created inside
#: ``asyncio.run`` (its batches run on that loop, which must survive them).
STYLES = ["sync", "async-private", "async-app"]


def consistent(s: DispatcherStats) -> bool:
    """The stats invariant (README, "Stats")."""
    return s.enqueued == s.dispatched + s.failed + s.evicted + s.abandoned + s.queued_entries + s.in_flight_entries


class Faulty:
    """A dispatch function that raises on the calls ``fails(call_number, entries)`` picks, and records
    every call, error and drop, so that a test can account for each entry."""

    def __init__(self, make_exc: Callable[[], BaseException], fails: Callable[[int, list[Any]], bool]) -> None:
        self.make_exc = make_exc
        self.fails = fails
        self.lock = threading.Lock()
        self.calls: list[tuple[list[Any], bool]] = []  # (entries, raised)
        self.errors: list[tuple[BaseException, list[Any]]] = []
        self.drops: list[tuple[list[Any], str]] = []

    def __call__(self, entries: list[Any]) -> None:
        with self.lock:
            fail = self.fails(len(self.calls), entries)
            self.calls.append((list(entries), fail))
        if fail:
            raise self.make_exc()

    async def async_call(self, entries: list[Any]) -> None:
        await asyncio.sleep(0)
        self(entries)

    def on_error(self, exc: BaseException, entries: list[Any]) -> None:
        with self.lock:
            self.errors.append((exc, list(entries)))

    def on_drop(self, entries: list[Any], reason: str) -> None:
        with self.lock:
            self.drops.append((list(entries), reason))

    def entries(self, raised: bool) -> list[Any]:
        with self.lock:
            return [e for entries, r in self.calls if r == raised for e in entries]

    def dropped(self, reason: str) -> list[Any]:
        with self.lock:
            return [e for entries, r in self.drops if r == reason for e in entries]


def produce(d: BackgroundDispatcher[Any], threads: int, per_thread: int) -> int:
    """``threads`` threads enqueue ``(t, i)``; returns how many entries were accepted."""
    accepted = [0] * threads
    go = threading.Barrier(threads)

    def run(t: int) -> None:
        go.wait(PATIENCE)
        for i in range(per_thread):
            accepted[t] += d.enqueue((t, i))
            if i % 25 == 24:
                time.sleep(0.0005)  # pacing: spreads the entries over many windows

    workers = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(PATIENCE)
    assert not any(w.is_alive() for w in workers), "a producer hung"
    return sum(accepted)


def make(style: str, faulty: Faulty, **options: Any) -> BackgroundDispatcher[Any]:
    fn: Callable[[list[Any]], Awaitable[None] | None] = faulty if style == "sync" else faulty.async_call
    return BackgroundDispatcher(fn, on_error=faulty.on_error, on_drop=faulty.on_drop, **options)


def in_style(
    style: str, create: Callable[[], BackgroundDispatcher[Any]], body: Callable[[BackgroundDispatcher[Any]], None]
) -> BackgroundDispatcher[Any]:
    """``body(create())``, as is or (async-app) with the dispatcher created inside
    ``asyncio.run``, checking that the loop keeps running throughout and that ``asyncio.run``
    returns normally. Returns the dispatcher. The app's loop runs on a thread of its own: on
    the main thread a ``KeyboardInterrupt`` or ``SystemExit`` is given back to the app's loop
    (see test_an_interrupt_on_the_main_threads_loop_fails_the_batch_and_reaches_the_app)."""
    if style != "async-app":
        d = create()
        body(d)
        return d

    async def main() -> BackgroundDispatcher[Any]:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.001)

        ticker = asyncio.create_task(tick())
        d = create()  # here, on the loop's thread: its batches run on this loop
        # The blocking body runs on a helper thread: the batches need this loop meanwhile.
        await asyncio.get_running_loop().run_in_executor(None, body, d)
        assert not ticker.done(), "the app's event loop task died"
        ticker.cancel()
        assert ticks > 0
        return d

    result: list[BackgroundDispatcher[Any]] = []
    app = threading.Thread(target=lambda: result.append(asyncio.run(main())))
    app.start()
    app.join(PATIENCE * 4)
    assert not app.is_alive(), "the app's event loop hung"
    assert result, "asyncio.run raised"
    return result[0]


# --------------------------------------------------------------------------------------------
# A dispatch function that raises.
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("kind", list(KINDS))
def test_a_raising_dispatch_function_fails_only_its_batches(
    kind: str, style: str, capsys: pytest.CaptureFixture[str]
) -> None:
    threads, per_thread = 4, 2_000
    faulty = Faulty(KINDS[kind], fails=lambda call, entries: call % 3 == 0)  # the 1st, 4th, 7th... call

    def body(d: BackgroundDispatcher[Any]) -> None:
        assert produce(d, threads, per_thread) == threads * per_thread
        assert d.flush(PATIENCE)

    start = time.monotonic()
    d = in_style(style, lambda: make(style, faulty, ms_delay=1, max_batch_entries=200, max_queue_entries=None), body)

    delivered, failed = faulty.entries(raised=False), faulty.entries(raised=True)
    calls = len(faulty.calls)
    raised = sum(r for _, r in faulty.calls)
    assert raised >= 1 and calls - raised >= 1, "need both failed and delivered batches"
    # Every accepted entry exactly once: delivered, or failed and dropped.
    everything = [(t, i) for t in range(threads) for i in range(per_thread)]
    assert sorted(delivered + failed) == everything
    assert faulty.dropped("failed") == failed, "on_drop got other entries than the failed batches'"
    assert [entries for _, entries in faulty.errors] == [entries for entries, r in faulty.calls if r]
    assert all(type(exc) is type(KINDS[kind]()) for exc, _ in faulty.errors)
    s = d.stats
    assert (s.enqueued, s.dispatched, s.failed, s.batches, s.retries) == (
        len(everything),
        len(delivered),
        len(failed),
        calls,
        0,
    )
    assert (s.rejected, s.evicted, s.abandoned, s.queued_entries, s.in_flight_entries) == (0, 0, 0, 0, 0)

    # The worker is alive: a batch after the failures is delivered.
    faulty.fails = lambda call, entries: False
    assert d.enqueue("after")
    if style == "async-app":
        assert d.close(PATIENCE), "the app loop is gone: batches run on the private loop now"
    else:
        assert d.flush(PATIENCE)
        assert d.close(PATIENCE)
    assert faulty.calls[-1] == (["after"], False)
    assert d.enqueue("closed") is False
    assert d.stats.rejected == 1 and consistent(d.stats)
    with capsys.disabled():
        print(
            f"\n[faults] {kind} ({style}): {len(everything)} accepted, {len(delivered)} delivered, "
            f"{len(failed)} failed and dropped, lost 0, duplicates 0, {calls} batches ({raised} raised), "
            f"{time.monotonic() - start:.2f} s"
        )


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("recovers", [True, False], ids=["third-attempt-succeeds", "always-raises"])
def test_retries_of_a_raising_dispatch_function_are_counted_exactly(kind: str, recovers: bool) -> None:
    attempts: dict[tuple[Any, ...], int] = {}

    def fails(call: int, entries: list[Any]) -> bool:
        batch = tuple(entries)
        attempts[batch] = attempts.get(batch, 0) + 1
        return not recovers or attempts[batch] < 3

    faulty = Faulty(KINDS[kind], fails)
    d = make("sync", faulty, ms_delay=1, max_batch_entries=10, max_attempts=3, retry_backoff=0.001)
    assert d.enqueue_many(range(100)) == 100
    assert d.flush(PATIENCE)
    assert d.close(PATIENCE)

    batches = len(attempts)
    assert all(n == 3 for n in attempts.values()), "each batch is tried exactly max_attempts times"
    assert sorted(e for batch in attempts for e in batch) == list(range(100)), "batches overlap"
    s = d.stats
    assert (s.batches, s.retries) == (3 * batches, 2 * batches)
    assert len(faulty.errors) == (2 if recovers else 3) * batches
    if recovers:
        assert (s.dispatched, s.failed) == (100, 0) and faulty.drops == []
        assert sorted(faulty.entries(raised=False)) == list(range(100))
    else:
        assert (s.dispatched, s.failed) == (0, 100)
        assert sorted(faulty.dropped("failed")) == list(range(100)), "each failed entry dropped once"


def test_hooks_raising_base_exceptions_are_contained(caplog: pytest.LogCaptureFixture) -> None:
    def on_error(exc: BaseException, entries: list[Any]) -> None:
        raise KeyboardInterrupt

    drops: list[Any] = []

    def on_drop(entries: list[Any], reason: str) -> None:
        drops.extend(entries)
        raise SystemExit(2)

    calls: list[list[Any]] = []

    def send(entries: list[Any]) -> None:
        calls.append(list(entries))
        if entries[0] % 2 == 0:
            raise ValueError("even")

    d = BackgroundDispatcher[int](send, ms_delay=1, max_batch_entries=1, on_error=on_error, on_drop=on_drop)
    with caplog.at_level("ERROR", logger="background_dispatcher"):
        assert d.enqueue_many(range(10)) == 10
        assert d.flush(PATIENCE)
    assert d.close(PATIENCE)
    assert calls == [[i] for i in range(10)]
    assert drops == [0, 2, 4, 6, 8]
    s = d.stats
    assert (s.dispatched, s.failed, s.batches) == (5, 5, 10)
    messages = [r.getMessage() for r in caplog.records]
    assert sum("on_error raised" in m for m in messages) == 5
    assert sum("on_drop raised" in m for m in messages) == 5


# --------------------------------------------------------------------------------------------
# A dispatch function that blocks until released.
# --------------------------------------------------------------------------------------------


class Stuck:
    """A dispatch function whose first call blocks until ``release()`` (sync: on an Event, GIL
    released; async: awaiting, so the loop it runs on keeps running)."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.released = threading.Event()
        self.delivered: list[Any] = []
        self.drops: list[tuple[list[Any], str]] = []

    def __call__(self, entries: list[Any]) -> None:
        self.started.set()
        if not self.released.wait(PATIENCE * 3):
            raise AssertionError("never released")
        self.delivered.extend(entries)

    async def async_call(self, entries: list[Any]) -> None:
        self.started.set()
        deadline = time.monotonic() + PATIENCE * 3
        while not self.released.is_set():
            if time.monotonic() > deadline:
                raise AssertionError("never released")
            await asyncio.sleep(0.002)
        self.delivered.extend(entries)

    def on_drop(self, entries: list[Any], reason: str) -> None:
        self.drops.append((list(entries), reason))

    def release(self) -> None:
        self.released.set()


@contextmanager
def timed(what: str, timeout: float, log: list[str]) -> Iterator[None]:
    """Checks the block took at least ``timeout`` seconds and at most ``timeout + LATE``."""
    start = time.monotonic()
    yield
    took = time.monotonic() - start
    log.append(f"{what}({timeout}) {took:.3f} s")
    assert timeout - 0.001 <= took <= timeout + LATE, f"{what}({timeout}) took {took:.3f} s"


@pytest.mark.parametrize("style", ["sync", "async-private"])
def test_a_blocked_dispatch_function_close_returns_false_on_time(
    style: str, capsys: pytest.CaptureFixture[str]
) -> None:
    stuck = Stuck()
    fn: Callable[[list[Any]], Awaitable[None] | None] = stuck if style == "sync" else stuck.async_call
    d = BackgroundDispatcher[Any](fn, ms_delay=1, on_drop=stuck.on_drop)
    assert d.enqueue("held")
    assert stuck.started.wait(PATIENCE)
    wait_until(lambda: d.stats.in_flight_entries == 1, "the batch to be in flight")
    queued = list(range(100))
    assert d.enqueue_many(queued) == 100
    log: list[str] = []
    try:
        with timed("flush", 0.2, log):
            assert d.flush(timeout=0.2) is False
        with timed("close", 0.3, log):
            assert d.close(timeout=0.3) is False
        # At the deadline, what was queued (not the batch in flight) went to on_drop.
        assert stuck.drops == [(queued, "shutdown_timeout")]
        s = d.stats
        assert (s.enqueued, s.abandoned, s.in_flight_entries, s.queued_entries, s.dispatched) == (101, 100, 1, 0, 0)
        assert consistent(s)
        # The handle stays usable: stats readable, enqueue refused (False, as documented),
        # and a second close or a flush with a deadline return False on time again.
        assert d.enqueue("late") is False
        assert d.enqueue_many(["late"] * 5) == 0
        assert d.stats.rejected == 6 and consistent(d.stats)
        with timed("close", 0.1, log):
            assert d.close(timeout=0.1) is False
        with timed("flush", 0.1, log):
            assert d.flush(timeout=0.1) is False
        with timed("aclose", 0.1, log):
            assert asyncio.run(d.aclose(timeout=0.1)) is False
        assert stuck.drops == [(queued, "shutdown_timeout")], "dropped twice"
    finally:
        stuck.release()
    assert d.close(timeout=PATIENCE) is True
    assert stuck.delivered == ["held"]
    s = d.stats
    assert (s.enqueued, s.dispatched, s.abandoned, s.rejected, s.batches) == (101, 1, 100, 6, 1)
    assert (s.queued_entries, s.in_flight_entries) == (0, 0) and consistent(s)
    with capsys.disabled():
        print(
            f"\n[faults] blocked until released ({style}): 101 accepted, 1 delivered, 100 dropped at the deadline, "
            f"lost 0; " + ", ".join(log)
        )


# --------------------------------------------------------------------------------------------
# The interpreter still exits: each fault in a child process.
# --------------------------------------------------------------------------------------------

EXIT_WITH_FAULT = """
    import asyncio, json, os, sys, threading, time
    import background_dispatcher
    from background_dispatcher import BackgroundDispatcher

    background_dispatcher.exit_timeout = 1.0
    FAULT = os.environ["BD_FAULT"]
    drops = []

    def send(entries):
        if FAULT == "blocked-forever":
            threading.Event().wait()  # never returns
        raise {"ValueError": ValueError, "SystemExit": SystemExit, "KeyboardInterrupt": KeyboardInterrupt}[FAULT]("x")

    async def asend(entries):
        await asyncio.sleep(0)
        send(entries)

    def on_drop(entries, reason):
        drops.append([len(entries), reason])

    fn = asend if os.environ["BD_STYLE"] == "async" else send
    d = BackgroundDispatcher(fn, ms_delay=1, max_batch_entries=10, on_drop=on_drop)
    d.enqueue_many(range(100))
    if FAULT == "blocked-forever":
        start = time.monotonic()
        closed = d.close(timeout=0.3)
        took = time.monotonic() - start
    else:
        closed, took = d.close(timeout=30), 0.0
    s = d.stats
    print(json.dumps({"closed": closed, "took": took, "late": d.enqueue(1), "drops": drops,
                      "stats": [s.enqueued, s.dispatched, s.failed, s.abandoned, s.in_flight_entries],
                      "batches": s.batches}), flush=True)
    sys.exit(7)
"""


@pytest.mark.parametrize("style", ["sync", "async"])
@pytest.mark.parametrize("fault", ["ValueError", "SystemExit", "KeyboardInterrupt", "blocked-forever"])
def test_the_interpreter_exits_whatever_the_dispatch_function_does(fault: str, style: str) -> None:
    start = time.monotonic()
    proc = run_python(EXIT_WITH_FAULT, timeout=60, env={"BD_FAULT": fault, "BD_STYLE": style})
    took = time.monotonic() - start
    output = proc.stdout + proc.stderr
    assert not [m for m in CRASH_MARKERS if m in output], output
    assert proc.returncode == 7, f"exit code {proc.returncode}\n{output}"
    assert took < 15, f"exiting took {took:.1f} s with exit_timeout = 1 s"
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["late"] is False
    if fault == "blocked-forever":
        # The first batch (up to 10 entries) is stuck in flight; the rest were dropped at
        # close's deadline, which returned on time; exit then gave up on the stuck batch.
        stuck = result["stats"][4]
        assert 1 <= stuck <= 10 and result["batches"] == 0, result  # a call counts once it returns
        assert result["closed"] is False and 0.3 - 0.001 <= result["took"] <= 0.3 + LATE, result
        assert result["drops"] == [[100 - stuck, "shutdown_timeout"]]
        assert result["stats"] == [100, 0, 0, 100 - stuck, stuck]
    else:
        # Every batch raised: all 100 entries failed and were dropped; each failure was logged.
        assert result["closed"] is True
        assert result["stats"] == [100, 0, 100, 0, 0]
        assert sum(n for n, reason in result["drops"] if reason == "failed") == 100
        assert proc.stderr.count("dispatch function raised") == result["batches"] >= 10, proc.stderr
        assert f"{fault}: x" in proc.stderr
