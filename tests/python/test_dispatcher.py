"""The Python API: construction, semantics shared with the core, callbacks, asyncio."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
from typing import Any

import pytest

from background_dispatcher import BackgroundDispatcher, DispatcherStats, ReentrantError
from conftest import PATIENCE, Gate, Recorder, wait_until

HOUR_MS = 3_600_000


# --- construction -------------------------------------------------------------------------


def test_bad_arguments_raise_specific_errors() -> None:
    ok = lambda entries: None  # noqa: E731
    with pytest.raises(TypeError, match="callable"):
        BackgroundDispatcher("not callable", ms_delay=10)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="ms_delay"):
        BackgroundDispatcher(ok)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        BackgroundDispatcher(ok, 10)  # type: ignore[call-arg]  # ms_delay is keyword-only
    for bad in (0, -5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="ms_delay"):
            BackgroundDispatcher(ok, ms_delay=bad)
    with pytest.raises(ValueError, match="overflow"):
        BackgroundDispatcher(ok, ms_delay=10, overflow="drop_everything")  # type: ignore[arg-type]
    for name in ("max_queue_entries", "max_queue_bytes", "max_batch_entries", "max_batch_bytes"):
        with pytest.raises(ValueError, match=name):
            limit: dict[str, Any] = {name: -1}
            BackgroundDispatcher(ok, ms_delay=10, **limit)
    with pytest.raises(ValueError, match="max_batch_entries"):
        BackgroundDispatcher(ok, ms_delay=10, max_queue_entries=5, max_batch_entries=6)
    with pytest.raises(ValueError, match="max_batch_bytes"):
        BackgroundDispatcher(ok, ms_delay=10, max_queue_bytes=5, max_batch_bytes=6)
    with pytest.raises(ValueError, match="max_attempts"):
        BackgroundDispatcher(ok, ms_delay=10, max_attempts=0)
    with pytest.raises(ValueError, match="retry_backoff"):
        BackgroundDispatcher(ok, ms_delay=10, retry_backoff=-1)
    with pytest.raises(ValueError, match="retry_backoff_max"):
        BackgroundDispatcher(ok, ms_delay=10, retry_backoff=2, retry_backoff_max=1)
    with pytest.raises(TypeError, match="on_drop"):
        BackgroundDispatcher(ok, ms_delay=10, on_drop=42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="on_error"):
        BackgroundDispatcher(ok, ms_delay=10, on_error=42)  # type: ignore[arg-type]


def test_the_class_is_generic_and_a_context_manager(recorder: Recorder) -> None:
    with BackgroundDispatcher[bytes](recorder, ms_delay=HOUR_MS) as d:
        assert d.enqueue(b"x")
    assert recorder.delivered == [b"x"], "leaving the with block closes (and delivers)"
    assert not d.enqueue(b"late")


# --- what is delivered --------------------------------------------------------------------


def test_the_dispatch_function_gets_the_very_objects_in_order(recorder: Recorder) -> None:
    entries: list[Any] = [{"n": i} for i in range(100)] + [b"raw", "text", None, 3.5, (1, 2)]
    d = BackgroundDispatcher[Any](recorder, ms_delay=HOUR_MS)
    assert d.enqueue_many(entries) == len(entries)
    assert d.flush(PATIENCE)
    delivered = recorder.delivered
    assert len(delivered) == len(entries)
    assert all(a is b for a, b in zip(delivered, entries, strict=True)), "entries must not be copied or serialised"
    assert isinstance(recorder.batches[0], list)
    assert recorder.threads[0] != threading.get_ident()
    d.close()


def test_references_are_released_after_dispatch(recorder: Recorder) -> None:
    class Entry:
        pass

    d = BackgroundDispatcher[Any](lambda entries: None, ms_delay=1)
    refs = []
    for _ in range(50):
        e = Entry()
        refs.append(__import__("weakref").ref(e))
        d.enqueue(e)
        del e
    assert d.flush(PATIENCE)
    gc.collect()
    assert all(r() is None for r in refs), "the dispatcher kept entries alive after dispatch"
    d.close()


def test_first_entry_opens_a_window_and_starts_are_ms_delay_apart(recorder: Recorder) -> None:
    delay = 0.03
    d = BackgroundDispatcher[Any](recorder, ms_delay=delay * 1000)
    opened = time.monotonic()
    d.enqueue(1)
    wait_until(lambda: recorder.batches, "the first batch")
    assert recorder.times[0] - opened >= delay
    end = time.monotonic() + delay * 6
    i = 0
    while time.monotonic() < end:
        d.enqueue(i)
        i += 1
        time.sleep(0.0005)
    wait_until(lambda: len(recorder.batches) >= 4, "several windows")
    starts = recorder.times[:4]
    assert all(b - a >= delay for a, b in zip(starts, starts[1:], strict=False)), starts
    assert all(batch for batch in recorder.batches), "an empty batch was dispatched"
    d.close()


def test_a_full_batch_goes_at_once(recorder: Recorder) -> None:
    d = BackgroundDispatcher[Any](recorder, ms_delay=HOUR_MS, max_batch_entries=10)
    d.enqueue_many(range(25))
    wait_until(lambda: len(recorder.batches) >= 2, "two full batches")
    assert recorder.batches[:2] == [list(range(10)), list(range(10, 20))]
    assert d.stats.queued_entries == 5
    d.close()
    assert recorder.delivered == list(range(25))


def test_byte_limits_count_len_of_bytes_like_and_str_and_nothing_else() -> None:
    gate = Gate()
    d = BackgroundDispatcher[Any](gate, ms_delay=1, max_queue_bytes=10, max_queue_entries=None)
    d.enqueue(b"")  # held at the gate: in flight, not counted
    assert gate.waiting.wait(PATIENCE)
    assert d.enqueue(b"12345")
    assert d.enqueue("abc")  # 3 code points
    assert d.enqueue(bytearray(b"12"))
    assert not d.enqueue(memoryview(b"12")), "10 bytes used, 2 more do not fit"
    assert d.stats.queued_bytes == 10
    for _ in range(1000):
        assert d.enqueue({"any": "object"}), "other objects count 0 bytes"
    assert d.stats.queued_bytes == 10
    assert not BackgroundDispatcher[Any](gate, ms_delay=1, max_batch_bytes=4).enqueue("12345"), "too large"
    gate.open()
    assert d.close(PATIENCE)


# --- bounds -------------------------------------------------------------------------------


def test_drop_newest_refuses_and_counts(recorder: Recorder) -> None:
    gate = Gate()
    d = BackgroundDispatcher[Any](gate, ms_delay=1, max_queue_entries=3, on_drop=recorder.on_drop)
    d.enqueue("held")
    assert gate.waiting.wait(PATIENCE)
    assert [d.enqueue(i) for i in range(5)] == [True, True, True, False, False]
    s = d.stats
    assert (s.queued_entries, s.in_flight_entries, s.rejected) == (3, 1, 2)
    gate.open()
    assert d.close(PATIENCE)
    assert recorder.drops == [], "refused entries are not dropped entries"


def test_drop_oldest_hands_the_evicted_to_on_drop(recorder: Recorder) -> None:
    gate = Gate()
    d = BackgroundDispatcher[Any](
        gate, ms_delay=1, max_queue_entries=2, overflow="drop_oldest", on_drop=recorder.on_drop
    )
    d.enqueue("held")
    assert gate.waiting.wait(PATIENCE)
    assert all(d.enqueue(i) for i in range(5))
    assert recorder.dropped("evicted") == [0, 1, 2]
    assert d.stats.evicted == 3
    gate.open()
    assert d.close(PATIENCE)


def test_block_waits_with_the_gil_released() -> None:
    gate = Gate()
    d = BackgroundDispatcher[Any](gate, ms_delay=1, max_queue_entries=1, overflow="block", block_timeout=60)
    d.enqueue("held")
    assert gate.waiting.wait(PATIENCE)
    assert d.enqueue("queued")
    result: list[bool] = []
    blocked = threading.Thread(target=lambda: result.append(d.enqueue("waits")))
    blocked.start()
    time.sleep(0.05)  # observing that it waits, not synchronising
    assert blocked.is_alive() and not result
    # This thread runs Python while the other one waits: the GIL is free.
    gate.open()
    blocked.join(PATIENCE)
    assert result == [True]
    assert d.close(PATIENCE)


def test_block_gives_up_after_block_timeout() -> None:
    gate = Gate()
    d = BackgroundDispatcher[Any](gate, ms_delay=1, max_queue_entries=1, overflow="block", block_timeout=0.05)
    d.enqueue("held")
    assert gate.waiting.wait(PATIENCE)
    d.enqueue("queued")
    start = time.monotonic()
    assert not d.enqueue("late")
    assert time.monotonic() - start >= 0.05
    gate.open()
    d.close(PATIENCE)


# --- failures -----------------------------------------------------------------------------


def test_an_exception_goes_to_on_error_and_the_entries_to_on_drop() -> None:
    rec = Recorder(fail=lambda entries: True)
    d = BackgroundDispatcher[Any](rec, ms_delay=1, on_error=rec.on_error, on_drop=rec.on_drop)
    d.enqueue("a")
    assert d.flush(PATIENCE)
    assert len(rec.errors) == 1
    exc, entries = rec.errors[0]
    assert isinstance(exc, RuntimeError) and entries == ["a"]
    assert rec.dropped("failed") == ["a"]
    assert d.stats.failed == 1
    d.enqueue("b")  # the worker carries on
    assert d.flush(PATIENCE)
    assert len(rec.batches) == 2
    d.close()


def test_without_on_error_exceptions_are_logged_with_traceback(caplog: pytest.LogCaptureFixture) -> None:
    def send(entries: list[Any]) -> None:
        raise ValueError("collector said no")

    d = BackgroundDispatcher[Any](send, ms_delay=1)
    with caplog.at_level(logging.ERROR, logger="background_dispatcher"):
        d.enqueue(1)
        assert d.flush(PATIENCE)
    records = [r for r in caplog.records if r.name == "background_dispatcher"]
    assert records and records[0].exc_info is not None
    assert "collector said no" in caplog.text
    d.close()


def test_exceptions_in_on_error_and_on_drop_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    def boom(*args: Any) -> None:
        raise KeyError("hook bug")

    def send(entries: list[Any]) -> None:
        raise ValueError("down")

    d = BackgroundDispatcher[Any](send, ms_delay=1, on_error=boom, on_drop=boom)
    with caplog.at_level(logging.ERROR, logger="background_dispatcher"):
        d.enqueue(1)
        assert d.flush(PATIENCE)
    messages = [r.getMessage() for r in caplog.records]
    assert any("on_error raised" in m for m in messages)
    assert any("on_drop raised" in m for m in messages)
    d.close()


def test_retries_redeliver_with_backoff() -> None:
    calls: list[tuple[float, list[Any]]] = []

    def flaky(entries: list[Any]) -> None:
        calls.append((time.monotonic(), list(entries)))
        if len(calls) < 3:
            raise ConnectionError("try again")

    d = BackgroundDispatcher[Any](flaky, ms_delay=1, max_attempts=3, retry_backoff=0.04, on_error=lambda e, b: None)
    d.enqueue("x")
    wait_until(lambda: len(calls) == 3, "two retries")
    assert [c[1] for c in calls] == [["x"]] * 3
    assert calls[1][0] - calls[0][0] >= 0.02 and calls[2][0] - calls[1][0] >= 0.04
    assert d.flush(PATIENCE)
    s = d.stats
    assert (s.dispatched, s.failed, s.batches, s.retries) == (1, 0, 3, 2)
    d.close()


def test_a_system_exit_in_the_dispatch_function_does_not_kill_the_worker(recorder: Recorder) -> None:
    def send(entries: list[Any]) -> None:
        recorder(entries)
        if entries == ["exit"]:
            raise SystemExit(1)

    d = BackgroundDispatcher[Any](send, ms_delay=1, on_error=recorder.on_error)
    d.enqueue("exit")
    assert d.flush(PATIENCE)
    d.enqueue("after")
    assert d.flush(PATIENCE)
    assert recorder.delivered == ["exit", "after"]
    assert isinstance(recorder.errors[0][0], SystemExit)
    d.close()


# --- flush, close, re-entrancy ------------------------------------------------------------


def test_flush_and_close_report_deadlines() -> None:
    rec = Recorder()
    gate = Gate()
    d = BackgroundDispatcher[Any](gate, ms_delay=1, on_drop=rec.on_drop)
    d.enqueue("held")
    assert gate.waiting.wait(PATIENCE)
    d.enqueue("queued")
    assert d.flush(0.05) is False
    assert d.close(0.05) is False
    assert rec.dropped("shutdown_timeout") == ["queued"]
    assert d.stats.abandoned == 1
    gate.open()
    assert d.close(PATIENCE) is True
    assert d.close() is True, "idempotent"
    assert d.enqueue("late") is False


def test_flush_and_close_inside_the_dispatch_function_raise_at_once() -> None:
    seen: list[Any] = []
    holder: list[BackgroundDispatcher[Any]] = []

    def send(entries: list[Any]) -> None:
        d = holder[0]
        for call in (d.flush, d.close):
            start = time.monotonic()
            try:
                call()
            except RuntimeError as exc:
                seen.append((type(exc), time.monotonic() - start))
        seen.append(d.enqueue("from inside"))

    d = BackgroundDispatcher[Any](send, ms_delay=1)
    holder.append(d)
    d.enqueue("outside")
    wait_until(lambda: len(seen) >= 3, "the callback to try")
    assert [s[0] for s in seen[:2]] == [ReentrantError, ReentrantError]
    assert issubclass(ReentrantError, RuntimeError)
    assert all(s[1] < 1.0 for s in seen[:2])
    assert seen[2] is True
    holder.clear()
    assert d.close(PATIENCE)


def test_stats_are_consistent_snapshots() -> None:
    d = BackgroundDispatcher[Any](lambda e: None, ms_delay=1, max_queue_entries=500, overflow="drop_oldest")
    stop = threading.Event()
    bad: list[DispatcherStats] = []

    def watch() -> None:
        while not stop.is_set():
            s = d.stats
            if s.enqueued != s.dispatched + s.failed + s.evicted + s.abandoned + s.queued_entries + s.in_flight_entries:
                bad.append(s)

    watcher = threading.Thread(target=watch)
    watcher.start()
    for i in range(20_000):
        d.enqueue(i)
    assert d.close(PATIENCE)
    stop.set()
    watcher.join()
    assert not bad, bad[:3]
    s = d.stats
    assert s.enqueued == 20_000 == s.dispatched + s.evicted
    assert s == d.stats and "DispatcherStats(enqueued=20000" in repr(s)


# --- asyncio ------------------------------------------------------------------------------


def test_async_dispatch_runs_on_the_loop_it_was_created_in() -> None:
    loop_threads: list[int] = []
    got: list[Any] = []

    async def send(entries: list[Any]) -> None:
        loop_threads.append(threading.get_ident())
        await asyncio.sleep(0)
        got.extend(entries)

    async def main() -> None:
        d = BackgroundDispatcher[Any](send, ms_delay=1)
        d.enqueue_many(range(10))
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.001)

        t = asyncio.create_task(ticker())
        assert await d.aflush(PATIENCE)
        with pytest.raises(ReentrantError):
            d.flush()  # would deadlock: the batches need this loop
        with pytest.raises(ReentrantError):
            d.close()
        assert await d.aclose(PATIENCE)
        t.cancel()
        assert ticks > 0, "aflush/aclose blocked the loop"

    asyncio.run(main())
    assert got == list(range(10))
    assert set(loop_threads) == {threading.get_ident()}


def test_async_dispatch_without_a_running_loop_uses_a_private_loop() -> None:
    threads: list[int] = []

    async def send(entries: list[Any]) -> None:
        threads.append(threading.get_ident())
        await asyncio.sleep(0.001)

    d = BackgroundDispatcher[Any](send, ms_delay=1)
    d.enqueue(1)
    assert d.flush(PATIENCE)
    assert threads and threads[0] != threading.get_ident()
    assert d.close(PATIENCE)


def test_async_with_closes() -> None:
    got: list[Any] = []

    async def send(entries: list[Any]) -> None:
        got.extend(entries)

    async def main() -> None:
        async with BackgroundDispatcher(send, ms_delay=HOUR_MS) as d:
            d.enqueue("x")

    asyncio.run(main())
    assert got == ["x"]


def test_an_async_exception_is_reported(recorder: Recorder) -> None:
    async def send(entries: list[Any]) -> None:
        raise ValueError("async failure")

    d = BackgroundDispatcher[Any](send, ms_delay=1, on_error=recorder.on_error, on_drop=recorder.on_drop)
    d.enqueue(1)
    assert d.flush(PATIENCE)
    assert isinstance(recorder.errors[0][0], ValueError)
    assert recorder.dropped("failed") == [1]
    d.close()
