"""Edge cases found in review: each test failed before its fix."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from background_dispatcher import BackgroundDispatcher, ReentrantError
from conftest import CRASH_MARKERS, PATIENCE, run_python, wait_until


def test_flush_covers_what_was_accepted_before_it_even_under_a_steady_stream() -> None:
    # Waiting in slices must not take a new flush per slice (each would take newer entries).
    def slow(entries: list[Any]) -> None:
        time.sleep(0.1)

    d = BackgroundDispatcher[Any](slow, ms_delay=1000)
    stop = threading.Event()

    def produce() -> None:
        while not stop.is_set():
            d.enqueue(1)
            time.sleep(0.001)

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        d.enqueue(0)
        start = time.monotonic()
        assert d.flush(timeout=PATIENCE)
        assert time.monotonic() - start < PATIENCE / 2
    finally:
        stop.set()
        producer.join()
        d.close()


def test_a_huge_ms_delay_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="ms_delay"):
        BackgroundDispatcher[Any](len, ms_delay=1e30)


def test_a_sync_dispatch_function_created_in_a_loop_is_not_tied_to_it() -> None:
    got: list[Any] = []

    async def main() -> None:
        with BackgroundDispatcher[Any](got.extend, ms_delay=60_000) as d:
            d.enqueue("x")
        # Leaving the block closed it (blocking close on the loop thread is fine here).

    asyncio.run(main())
    assert got == ["x"]


def test_aflush_and_aclose_inside_an_async_dispatch_function_refuse() -> None:
    outcomes: list[str] = []
    holder: list[BackgroundDispatcher[Any]] = []

    async def send(entries: list[Any]) -> None:
        for call in (holder[0].aflush, holder[0].aclose):
            try:
                await asyncio.wait_for(call(), 5)
                outcomes.append("returned")
            except ReentrantError:
                outcomes.append("refused")
            except asyncio.TimeoutError:
                outcomes.append("deadlocked")

    async def main() -> None:
        d = BackgroundDispatcher[Any](send, ms_delay=1)
        holder.append(d)
        d.enqueue(1)
        await d.aflush(PATIENCE)
        holder.clear()
        await d.aclose(PATIENCE)

    asyncio.run(main())
    assert outcomes == ["refused", "refused"]


def _in_flight(d: BackgroundDispatcher[Any]) -> bool:
    return d.stats.in_flight_entries == 1


def test_del_after_a_timed_out_close_does_not_wait_again() -> None:
    release = threading.Event()

    def stuck(entries: list[Any]) -> None:
        release.wait(PATIENCE)

    d = BackgroundDispatcher[Any](stuck, ms_delay=1)
    d.enqueue(1)
    # A temporary partial, not a closure over `d`: the test deletes the name below.
    wait_until(functools.partial(_in_flight, d), "the batch to be in flight")
    assert d.close(timeout=0.05) is False
    start = time.monotonic()
    del d
    assert time.monotonic() - start < 2, "dropping waited for a stuck dispatch function"
    release.set()


def test_a_dispatcher_dropped_on_its_loop_thread_still_delivers_at_exit(tmp_path: Path) -> None:
    out = tmp_path / "delivered.txt"
    proc = run_python(f"""
        import asyncio
        from background_dispatcher import BackgroundDispatcher

        async def send(entries):
            with open({str(out)!r}, "a") as f:
                f.writelines(f"{{e}}\\n" for e in entries)

        async def main():
            d = BackgroundDispatcher(send, ms_delay=60_000, max_batch_entries=1)
            for i in range(5):
                d.enqueue(i)
            del d  # on the loop thread: cannot wait here

        asyncio.run(main())
    """)
    assert proc.returncode == 0, proc.stderr
    assert not any(m in proc.stdout + proc.stderr for m in CRASH_MARKERS)
    assert sorted(int(x) for x in out.read_text().split()) == list(range(5))


def test_a_batch_offered_to_a_stopping_loop_before_it_started_runs_on_the_private_loop(tmp_path: Path) -> None:
    # The loop is held (synchronously) until the worker has handed it a batch, so the batch is
    # offered to a loop that stops before running it: it must still be delivered, once, even
    # with no retries allowed.
    out = tmp_path / "delivered.txt"
    proc = run_python(f"""
        import asyncio, threading
        from background_dispatcher import BackgroundDispatcher

        offered = threading.Event()
        submit = asyncio.run_coroutine_threadsafe

        def spy(coro, loop):  # the worker hands the batch to the loop
            future = submit(coro, loop)
            offered.set()
            return future

        asyncio.run_coroutine_threadsafe = spy

        async def send(entries):
            with open({str(out)!r}, "a") as f:
                f.writelines(f"{{e}}\\n" for e in entries)

        async def main():
            d = BackgroundDispatcher(send, ms_delay=1, max_attempts=1)
            d.enqueue("offered")
            assert offered.wait({PATIENCE}), "batch never offered"  # holds the loop
            return d  # asyncio.run now cancels the task before it starts, and closes the loop

        d = asyncio.run(main())
        assert d.close(timeout={PATIENCE}), "close timed out"
        s = d.stats
        assert (s.dispatched, s.failed) == (1, 0), s
    """)
    assert proc.returncode == 0, proc.stderr
    assert not any(m in proc.stdout + proc.stderr for m in CRASH_MARKERS)
    assert out.read_text().split() == ["offered"]


def test_a_batch_the_app_cancels_before_it_started_is_offered_to_the_running_loop_again(tmp_path: Path) -> None:
    # The common shutdown idiom "cancel every task" catches the batch's task before its first
    # step while the loop goes on: the batch must still run on the app's loop (where the app's
    # sessions live), once, not on the private loop in another thread.
    proc = run_python(f"""
        import asyncio, threading
        from background_dispatcher import BackgroundDispatcher

        offered = threading.Event()
        submit = asyncio.run_coroutine_threadsafe

        def spy(coro, loop):
            future = submit(coro, loop)
            offered.set()
            return future

        asyncio.run_coroutine_threadsafe = spy
        runs = []

        async def main():
            app_loop = asyncio.get_running_loop()

            async def send(entries):
                runs.append((entries, asyncio.get_running_loop() is app_loop))

            d = BackgroundDispatcher(send, ms_delay=1, max_attempts=1)
            d.enqueue("offered")
            assert offered.wait({PATIENCE}), "batch never offered"  # holds the loop
            await asyncio.sleep(0)  # lets the offered task be created
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()
            for _ in range(int({PATIENCE} * 100)):
                if runs:
                    break
                await asyncio.sleep(0.01)
            assert await d.aclose(timeout={PATIENCE}), "close timed out"
            return d

        d = asyncio.run(main())
        assert runs == [(["offered"], True)], runs
        assert (d.stats.dispatched, d.stats.failed) == (1, 0), d.stats
    """)
    assert proc.returncode == 0, proc.stderr
    assert not any(m in proc.stdout + proc.stderr for m in CRASH_MARKERS)


@pytest.mark.parametrize("exc", ["KeyboardInterrupt", "SystemExit(3)"])
def test_an_interrupt_on_the_main_threads_loop_fails_the_batch_and_reaches_the_app(exc: str) -> None:
    # On the main thread a KeyboardInterrupt or SystemExit may be Ctrl-C or a SIGTERM
    # handler's sys.exit landing in the batch: the batch fails, and the app still gets it.
    proc = run_python(f"""
        import asyncio
        from background_dispatcher import BackgroundDispatcher

        dropped, errors = [], []

        async def send(entries):
            raise {exc}

        async def main():
            global d
            d = BackgroundDispatcher(send, ms_delay=1, on_drop=lambda e, r: dropped.append((e, r)),
                                     on_error=lambda x, e: errors.append(type(x).__name__))
            d.enqueue("x")
            await asyncio.sleep({PATIENCE})
            print("the app was not interrupted")

        try:
            asyncio.run(main())
        except (KeyboardInterrupt, SystemExit) as e:
            print("the app got", type(e).__name__)
        assert d.close(timeout={PATIENCE})
        assert dropped == [(["x"], "failed")], dropped
        assert errors == ["{exc.split("(")[0]}"], errors
        assert (d.stats.dispatched, d.stats.failed) == (0, 1), d.stats
    """)
    assert proc.returncode == 0, proc.stderr
    assert f"the app got {exc.split('(')[0]}" in proc.stdout, proc.stdout
    assert not any(m in proc.stdout + proc.stderr for m in CRASH_MARKERS)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_fork_child_does_not_use_the_parents_event_loops(tmp_path: Path) -> None:
    # Forked while the private loop runs a batch, and once from inside a coroutine.
    proc = run_python(
        """
        import asyncio, json, os, threading
        from background_dispatcher import BackgroundDispatcher

        started, release = threading.Event(), threading.Event()
        received = []

        async def send(entries):
            if entries == ["hold"]:
                started.set()
                while not release.is_set():
                    await asyncio.sleep(0.005)
            received.extend(entries)

        d = BackgroundDispatcher(send, ms_delay=1)
        d.enqueue("hold")
        assert started.wait(20)
        results = {}
        pid = os.fork()
        if pid == 0:
            child = []
            async def csend(entries):
                child.extend(entries)
            received.clear()
            ok = [d.enqueue(i) for i in range(3)]
            closed = d.close(timeout=10)
            os._exit(0 if closed and all(ok) and sorted(received) == [0, 1, 2] else 1)
        release.set()
        _, status = os.waitpid(pid, 0)
        results["private_loop_child"] = os.waitstatus_to_exitcode(status)

        async def main():
            d2 = BackgroundDispatcher(send, ms_delay=1)
            pid = os.fork()
            if pid == 0:
                received.clear()
                d2.enqueue("c")
                ok = d2.flush(timeout=10)
                os._exit(0 if ok and received == ["c"] else 1)
            _, status = os.waitpid(pid, 0)
            results["app_loop_child"] = os.waitstatus_to_exitcode(status)
            await d2.aclose(10)

        asyncio.run(main())
        d.close(10)
        print(json.dumps(results))
    """,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1]) == {"private_loop_child": 0, "app_loop_child": 0}


def test_an_async_dispatcher_let_go_of_without_close_closes_its_private_loop() -> None:
    # Only close() closed the private loop: letting the dispatcher go left it to the garbage
    # collector, which reports it (ResourceWarning: unclosed event loop) in development mode.
    proc = run_python(
        """
        import gc
        from background_dispatcher import BackgroundDispatcher

        got = []

        async def send(entries):
            got.extend(entries)

        for _ in range(3):
            d = BackgroundDispatcher(send, ms_delay=60_000)
            d.enqueue_many(range(10))
            del d  # delivers, then the runner and its loop go
            gc.collect()
        print(len(got))
    """,
        env={"PYTHONDEVMODE": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["30"]
    assert proc.stderr == ""
