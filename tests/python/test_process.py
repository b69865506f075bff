"""Process-level behaviour: interpreter exit (normal, sys.exit, uncaught exception, daemon
threads, exit_timeout), Ctrl-C while waiting, the GIL, many threads, fork and multiprocessing,
garbage collection, and a quiet exit.

Most of these run a child interpreter: the child's dispatch function appends the entries it gets
to a file (one per line, opened, written and flushed per batch), and the test reads that file
after the child has exited, so it sees exactly what was delivered before the process ended.
"""

from __future__ import annotations

import gc
import json
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import pytest

from background_dispatcher import BackgroundDispatcher
from conftest import CRASH_MARKERS, PATIENCE, run_python, wait_until

# The common head of the child scripts: `send` appends each batch to the file $BD_OUT.
PRELUDE = textwrap.dedent(
    """\
    import json, os, sys, threading, time
    import background_dispatcher
    from background_dispatcher import BackgroundDispatcher

    OUT = os.environ["BD_OUT"]

    def send(entries):
        with open(OUT, "a") as f:
            f.write("".join(f"{e}\\n" for e in entries))
            f.flush()
    """
)


def child(
    body: str, out: Path, timeout: float = 60.0, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Runs PRELUDE + `body` in a fresh interpreter, with $BD_OUT = `out`."""
    return run_python(PRELUDE + textwrap.dedent(body), timeout=timeout, env={"BD_OUT": str(out), **(env or {})})


def assert_no_crash(proc: subprocess.CompletedProcess[str]) -> None:
    output = proc.stdout + proc.stderr
    for marker in CRASH_MARKERS:
        assert marker not in output, f"{marker!r} in the child's output:\n{output}"


def last_json(stdout: str) -> Any:
    lines = stdout.strip().splitlines()
    assert lines, "the child printed nothing"
    return json.loads(lines[-1])


def delivered(out: Path) -> list[str]:
    return out.read_text().splitlines() if out.exists() else []


def describe(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit code {proc.returncode}\n--- stdout:\n{proc.stdout}\n--- stderr:\n{proc.stderr}"


# --------------------------------------------------------------------------------------------
# 1-3. Interpreter exit without close() delivers everything queued.
# --------------------------------------------------------------------------------------------

# ms_delay=10 s: nothing is dispatched before the script ends, so the exit hook delivers it all.
QUEUE_5000 = """
d = BackgroundDispatcher(send, ms_delay=10_000)
accepted = d.enqueue_many(f"e{i}" for i in range(5000))
stats = d.stats
print(json.dumps({"accepted": accepted, "dispatched": stats.dispatched, "queued": stats.queued_entries}), flush=True)
"""

EXPECTED_5000 = [f"e{i}" for i in range(5000)]


def check_queued_before_exit(proc: subprocess.CompletedProcess[str]) -> None:
    # Nothing had been dispatched when the script ended: the exit hook did the delivery.
    assert last_json(proc.stdout) == {"accepted": 5000, "dispatched": 0, "queued": 5000}, describe(proc)


def test_exit_without_close_delivers_everything(tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    proc = child(QUEUE_5000, out)
    assert_no_crash(proc)
    assert proc.returncode == 0, describe(proc)
    check_queued_before_exit(proc)
    assert delivered(out) == EXPECTED_5000
    assert proc.stderr == ""


def test_sys_exit_code_is_kept_and_everything_delivered(tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    proc = child(QUEUE_5000 + "sys.exit(3)\n", out)
    assert_no_crash(proc)
    assert proc.returncode == 3, describe(proc)
    check_queued_before_exit(proc)
    assert delivered(out) == EXPECTED_5000
    assert proc.stderr == ""


def test_uncaught_exception_exit_delivers_everything(tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    proc = child(QUEUE_5000 + "raise RuntimeError('boom at top level')\n", out)
    assert_no_crash(proc)
    assert proc.returncode == 1, describe(proc)
    check_queued_before_exit(proc)
    assert delivered(out) == EXPECTED_5000
    # The script's own traceback, and nothing else.
    assert "Traceback (most recent call last)" in proc.stderr
    assert proc.stderr.rstrip().endswith("RuntimeError: boom at top level"), proc.stderr
    assert proc.stderr.count("Traceback") == 1, proc.stderr


# --------------------------------------------------------------------------------------------
# 4. A daemon thread still enqueueing when the main thread exits.
# --------------------------------------------------------------------------------------------

DAEMON_PRODUCER = """
    # Unbounded queue: every enqueue is accepted until the exit hook closes the dispatcher,
    # after which every enqueue is refused. So what was accepted is exactly 0..K-1 for some K.
    d = BackgroundDispatcher(send, ms_delay=20, max_queue_entries=None)
    accepted = 0

    def produce():
        global accepted
        i = 0
        while True:
            if d.enqueue(i):
                accepted += 1
            i += 1
            if i % 1000 == 0:
                time.sleep(0)  # let the main thread and the worker have the GIL now and then

    threading.Thread(target=produce, daemon=True).start()
    deadline = time.monotonic() + 20
    while accepted < 20_000 and time.monotonic() < deadline:
        time.sleep(0.001)
    seen = accepted  # every entry up to here was accepted before the exit hook runs
    print(json.dumps({"seen": seen}), flush=True)
"""


@pytest.mark.parametrize("run", range(5))
def test_daemon_thread_enqueueing_at_exit(tmp_path: Path, run: int) -> None:
    out = tmp_path / "out.txt"
    proc = child(DAEMON_PRODUCER, out)
    assert_no_crash(proc)
    assert proc.returncode == 0, describe(proc)
    seen = last_json(proc.stdout)["seen"]
    assert seen >= 20_000, "the producer did not get going"
    got = delivered(out)
    assert len(got) >= seen, f"only {len(got)} of the {seen} entries accepted before exit were delivered"
    # Well-formed, unique, in the producer's order and without a gap: exactly what was accepted.
    assert [int(line) for line in got] == list(range(len(got)))


# --------------------------------------------------------------------------------------------
# 5. exit_timeout bounds interpreter exit when the dispatch function is stuck.
# --------------------------------------------------------------------------------------------

STUCK_AT_EXIT = """
    background_dispatcher.exit_timeout = 1.0
    MODE = os.environ["BD_MODE"]
    started = threading.Event()

    def slow_send(entries):
        started.set()
        if MODE == "sleeping":
            time.sleep(30)  # waiting on a dead collector, GIL released
        else:
            end = time.monotonic() + 30  # CPU-bound Python code, taking and giving back the GIL
            while time.monotonic() < end:
                pass

    def on_drop(entries, reason):
        print("dropped", json.dumps([entries, reason]), flush=True)

    d = BackgroundDispatcher(slow_send, ms_delay=10, on_drop=on_drop)
    d.enqueue("stuck")
    print(json.dumps({"started": started.wait(20)}), flush=True)
    d.enqueue("behind")  # queued behind the stuck batch: abandoned at the exit deadline
    sys.exit(int(os.environ["BD_CODE"]))
"""


@pytest.mark.parametrize("code", [0, 7])
@pytest.mark.parametrize("mode", ["sleeping", "busy"])
def test_exit_timeout_bounds_exit_with_a_stuck_dispatch(tmp_path: Path, mode: str, code: int) -> None:
    out = tmp_path / "out.txt"
    start = time.monotonic()
    proc = child(STUCK_AT_EXIT, out, env={"BD_MODE": mode, "BD_CODE": str(code)})
    elapsed = time.monotonic() - start
    assert_no_crash(proc)
    assert elapsed < 15, f"exit took {elapsed:.1f} s with exit_timeout = 1 s"
    lines = proc.stdout.splitlines()
    assert lines[0] == json.dumps({"started": True}), describe(proc)
    assert 'dropped [["behind"], "shutdown_timeout"]' in lines, describe(proc)
    # The dispatch function is left running (parked at finalization); the exit code is kept.
    assert proc.returncode == code, describe(proc)
    assert proc.stderr == ""


# --------------------------------------------------------------------------------------------
# 6. Ctrl-C interrupts close() and flush() promptly; calling them again delivers everything.
# --------------------------------------------------------------------------------------------

CTRL_C = """
    WHAT = os.environ["BD_WHAT"]  # "close" or "flush"
    received = []

    def slow_send(entries):
        print("dispatching", flush=True)  # only once WHAT() has started: the window is 60 s
        time.sleep(3)
        received.extend(entries)

    d = BackgroundDispatcher(slow_send, ms_delay=60_000)
    assert d.enqueue_many(range(100)) == 100
    print("closing" if WHAT == "close" else "flushing", flush=True)
    try:
        getattr(d, WHAT)()
        print("not interrupted", flush=True)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    # Again, without interruption: everything is delivered.
    first = getattr(d, WHAT)(timeout=30)
    closed = d.close(timeout=30)
    print(json.dumps({"first": first, "closed": closed, "received": received}), flush=True)
"""


class Lines:
    """Reads a pipe's lines on a thread, stamped with the time they were read."""

    def __init__(self, stream: Any) -> None:
        self.queue: queue.Queue[tuple[float, str | None]] = queue.Queue()
        self.seen: list[str] = []
        self.thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.thread.start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            self.queue.put((time.monotonic(), line.rstrip("\n")))
        self.queue.put((time.monotonic(), None))

    def expect(self, wanted: str, timeout: float = PATIENCE) -> float:
        """Waits for the line `wanted`; returns when it was read."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                stamp, line = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line {wanted!r} within {timeout} s; got {self.seen}") from None
            if line is None:
                raise AssertionError(f"the child ended without printing {wanted!r}; got {self.seen}")
            self.seen.append(line)
            if line == wanted:
                return stamp

    def rest(self, timeout: float = PATIENCE) -> list[str]:
        self.thread.join(timeout)
        while not self.queue.empty():
            _, line = self.queue.get()
            if line is not None:
                self.seen.append(line)
        return self.seen


@pytest.mark.parametrize("what", ["close", "flush"])
def test_ctrl_c_interrupts_a_waiting_call(tmp_path: Path, what: str) -> None:
    code = PRELUDE + textwrap.dedent(CTRL_C)
    stderr_path = tmp_path / "stderr.txt"
    with open(stderr_path, "w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-c", code],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env={**os.environ, "BD_OUT": str(tmp_path / "unused"), "BD_WHAT": what},
        )
    try:
        lines = Lines(proc.stdout)
        lines.expect("closing" if what == "close" else "flushing")
        lines.expect("dispatching")  # the call is waiting for a 3 s batch now
        sent = time.monotonic()
        os.kill(proc.pid, signal.SIGINT)
        latency = lines.expect("interrupted") - sent
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        output = lines.rest()
        assert proc.stdout is not None
        proc.stdout.close()
    stderr_text = stderr_path.read_text()
    for marker in CRASH_MARKERS:
        assert marker not in "\n".join(output) + stderr_text
    assert proc.returncode == 0, f"exit code {proc.returncode}\n{output}\n{stderr_text}"
    assert latency < 1.5, f"KeyboardInterrupt came {latency:.2f} s after SIGINT"
    result = json.loads(output[-1])
    assert result == {"first": True, "closed": True, "received": list(range(100))}
    assert stderr_text == ""


# --------------------------------------------------------------------------------------------
# 7. close() while the worker waits for the GIL that the main thread holds.
# --------------------------------------------------------------------------------------------

GIL_HOLDER = """
    MODE = os.environ["BD_MODE"]
    if MODE == "hold":
        # The main thread keeps the GIL until it blocks: the worker cannot run the batch.
        sys.setswitchinterval(100)
    d = BackgroundDispatcher(send, ms_delay=20)
    assert d.enqueue_many(range(1000)) == 1000
    end = time.monotonic() + 0.3  # well past the 20 ms window
    give_up = time.monotonic() + 20
    while time.monotonic() < end or (MODE == "hold" and d.stats.in_flight_entries == 0 and time.monotonic() < give_up):
        pass
    before = d.stats
    start = time.monotonic()
    ok = d.close()
    took = time.monotonic() - start
    print(json.dumps({"ok": ok, "took": took, "in_flight_before": before.in_flight_entries,
                      "dispatched_before": before.dispatched, "dispatched": d.stats.dispatched}), flush=True)
"""


@pytest.mark.parametrize("mode", ["hold", "busy"])
def test_close_while_the_worker_waits_for_the_gil(tmp_path: Path, mode: str) -> None:
    out = tmp_path / "out.txt"
    proc = child(GIL_HOLDER, out, timeout=60, env={"BD_MODE": mode})
    assert_no_crash(proc)
    assert proc.returncode == 0, describe(proc)
    result = last_json(proc.stdout)
    if mode == "hold":
        # The worker had taken the batch and was waiting for the GIL when close() was called.
        assert result["in_flight_before"] == 1000 and result["dispatched_before"] == 0, result
    assert result["ok"] is True
    assert result["took"] < 5, result
    assert result["dispatched"] == 1000
    assert delivered(out) == [str(i) for i in range(1000)]
    assert proc.stderr == ""


# --------------------------------------------------------------------------------------------
# 8. Many Python threads enqueueing while the dispatch function builds Python objects.
# --------------------------------------------------------------------------------------------

THREADS = 8
PER_THREAD = 50_000


@pytest.mark.parametrize(
    "bounds",
    [
        pytest.param({"max_queue_entries": None}, id="unbounded"),
        pytest.param({"max_queue_entries": 5_000, "overflow": "block", "block_timeout": float("inf")}, id="block"),
    ],
)
def test_many_threads_no_loss_no_hang(bounds: dict[str, Any]) -> None:
    received: list[tuple[int, int]] = []
    batches = 0

    def send(entries: list[tuple[int, int]]) -> None:
        nonlocal batches
        objects = [{"n": e} for e in entries]
        json.dumps(objects[:200])
        received.extend(o["n"] for o in objects)
        batches += 1

    d: BackgroundDispatcher[tuple[int, int]] = BackgroundDispatcher(send, ms_delay=2, **bounds)
    refused: list[int] = []
    go = threading.Barrier(THREADS)

    def produce(t: int) -> None:
        go.wait(timeout=PATIENCE)
        n = 0
        for i in range(PER_THREAD):
            if not d.enqueue((t, i)):
                n += 1
        refused.append(n)

    threads = [threading.Thread(target=produce, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads), "a producer hung"
    assert refused == [0] * THREADS
    assert d.close(timeout=60)

    assert len(received) == THREADS * PER_THREAD
    for t in range(THREADS):
        # Per-thread order, nothing lost, nothing twice.
        assert [i for (tt, i) in received if tt == t] == list(range(PER_THREAD))
    stats = d.stats
    assert stats.enqueued == stats.dispatched == THREADS * PER_THREAD
    assert (stats.rejected, stats.failed, stats.evicted, stats.abandoned) == (0, 0, 0, 0)
    assert (stats.queued_entries, stats.in_flight_entries) == (0, 0)
    assert stats.batches == batches


# --------------------------------------------------------------------------------------------
# 9. fork() while threads keep enqueueing.
# --------------------------------------------------------------------------------------------


def _fork_child(d: BackgroundDispatcher[Any], received: list[Any], report: int) -> int:
    """Runs in the forked child; returns its exit code, and writes what it found to `report`."""
    base = len(received)  # the parent's deliveries, copied by fork
    s = d.stats
    empty = [s.enqueued, s.dispatched, s.queued_entries, s.in_flight_entries]
    accepted = d.enqueue_many(("child", i) for i in range(1000))
    closed = d.close(timeout=30)
    mine = received[base:]
    ok = empty == [0, 0, 0, 0] and accepted == 1000 and closed and mine == [("child", i) for i in range(1000)]
    info = {
        "empty": empty,
        "accepted": accepted,
        "closed": closed,
        "received": len(mine),
        "foreign": [e for e in mine if e[0] != "child"][:5],
    }
    os.write(report, json.dumps(info).encode())
    return 0 if ok else 1


def _wait_for_child(pid: int, timeout: float = 60.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError("the forked child hung")
        time.sleep(0.005)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_fork_while_threads_enqueue() -> None:
    received: list[Any] = []

    def send(entries: list[Any]) -> None:
        received.extend(entries)  # no lock: one a thread might hold at fork would stay held

    d: BackgroundDispatcher[Any] = BackgroundDispatcher(send, ms_delay=5)
    stop = threading.Event()
    accepted: dict[int, list[int]] = {}

    def produce(t: int) -> None:
        mine = accepted[t] = []
        i = 0
        while not stop.is_set():
            if d.enqueue(("parent", t, i)):
                mine.append(i)
            i += 1
            if i % 500 == 0:
                time.sleep(0.0005)

    threads = [threading.Thread(target=produce, args=(t,)) for t in range(3)]
    for thread in threads:
        thread.start()
    try:
        for n in range(20):
            goal = sum(len(v) for v in accepted.values()) + 5000

            def progressed(goal: int = goal) -> bool:
                return sum(len(v) for v in accepted.values()) >= goal

            wait_until(progressed, "the producers to make progress")
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:  # the child: never return into pytest
                code = 2
                try:
                    os.close(r)
                    code = _fork_child(d, received, w)
                finally:
                    os._exit(code)
            os.close(w)
            status = _wait_for_child(pid)
            with os.fdopen(r) as report:
                info = report.read()
            assert os.waitstatus_to_exitcode(status) == 0, f"fork {n}: {info}"
    finally:
        stop.set()
        for thread in threads:
            thread.join(PATIENCE)
    assert not any(thread.is_alive() for thread in threads)
    assert d.close(timeout=60)
    assert all(e[0] == "parent" for e in received)
    for t in range(3):
        assert [e[2] for e in received if e[1] == t] == accepted[t]
    stats = d.stats
    assert stats.enqueued == stats.dispatched == sum(len(v) for v in accepted.values())


FORK_DURING_DISPATCH = """
    # The parent's dispatch function is running (sleeping) when the child is forked: the child
    # has no such callback, so its exit hook has nothing to wait for.
    import multiprocessing
    assert background_dispatcher.exit_timeout == 5.0
    started = threading.Event()

    def slow_send(entries):
        started.set()
        time.sleep(4)

    d = BackgroundDispatcher(slow_send, ms_delay=1)
    d.enqueue("parent")
    assert started.wait(20)

    def in_child():
        own = BackgroundDispatcher(send, ms_delay=60_000)
        own.enqueue_many(f"child-{i}" for i in range(100))
        # returns without close()

    start = time.monotonic()
    if os.environ["BD_HOW"] == "os.fork":
        pid = os.fork()
        if pid == 0:
            in_child()
            sys.exit(0)  # a normal interpreter exit, through atexit
        status = os.waitpid(pid, 0)[1]
        code = os.waitstatus_to_exitcode(status)
    else:
        p = multiprocessing.get_context("fork").Process(target=in_child)
        p.start()
        p.join(30)
        code = p.exitcode
    print(json.dumps({"code": code, "took": time.monotonic() - start}), flush=True)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.parametrize("how", ["os.fork", "multiprocessing"])
def test_fork_child_exits_promptly_while_parent_dispatches(tmp_path: Path, how: str) -> None:
    out = tmp_path / "out.txt"
    # Python 3.12+ warns that forking a multi-threaded process may deadlock the child: the
    # interpreter's warning about any such fork, silenced so that stderr shows only ours.
    quiet = {"PYTHONWARNINGS": "ignore:This process:DeprecationWarning"}
    proc = child(FORK_DURING_DISPATCH, out, env={"BD_HOW": how, **quiet})
    assert_no_crash(proc)
    assert proc.returncode == 0, describe(proc)
    result = last_json(proc.stdout)
    assert result["code"] == 0, describe(proc)
    assert delivered(out) == [f"child-{i}" for i in range(100)]
    # Well under exit_timeout (5 s) and under the parent's 4 s batch, which is not the child's.
    assert result["took"] < 3, f"the child took {result['took']:.1f} s to exit"
    assert proc.stderr == ""


# --------------------------------------------------------------------------------------------
# 10. multiprocessing children that return without close().
# --------------------------------------------------------------------------------------------

MP_SCRIPT = """\
import json, os, sys
if sys.argv[1] == "multiprocessing-first":
    import multiprocessing
from background_dispatcher import BackgroundDispatcher
import multiprocessing

OUT = sys.argv[2]


def send(entries):
    with open(os.path.join(OUT, f"{os.getpid()}.txt"), "a") as f:
        f.write("".join(f"{e}\\n" for e in entries))
        f.flush()


d = None  # the parent's, inherited by fork children


def fork_target():
    for i in range(1000):
        if not d.enqueue(f"child-{i}"):
            sys.exit(5)
    # returns without close(): the process leaves through os._exit


def spawn_target():
    own = BackgroundDispatcher(send, ms_delay=60_000)
    for i in range(1000):
        if not own.enqueue(f"child-{i}"):
            sys.exit(5)
    # returns without close(): delivered at interpreter exit


if __name__ == "__main__":
    method = sys.argv[3]
    ctx = multiprocessing.get_context(method)
    d = BackgroundDispatcher(send, ms_delay=60_000)
    for i in range(10):
        d.enqueue(f"parent-{i}")  # queued at fork: the parent's alone
    p = ctx.Process(target=fork_target if method == "fork" else spawn_target)
    p.start()
    p.join(45)
    if p.is_alive():
        p.kill()
        p.join()
    print(json.dumps({"pid": os.getpid(), "child_pid": p.pid, "exitcode": p.exitcode}), flush=True)
    # the parent exits without close() too
"""


@pytest.mark.parametrize("import_order", ["dispatcher-first", "multiprocessing-first"])
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_multiprocessing_child_delivers_without_close(tmp_path: Path, method: str, import_order: str) -> None:
    script = tmp_path / "mp_script.py"
    script.write_text(MP_SCRIPT)
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.run(
        [sys.executable, str(script), import_order, str(out), method],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert_no_crash(proc)
    assert proc.returncode == 0, describe(proc)
    result = last_json(proc.stdout)
    assert result["exitcode"] == 0, describe(proc)
    assert delivered(out / f"{result['child_pid']}.txt") == [f"child-{i}" for i in range(1000)]
    assert delivered(out / f"{result['pid']}.txt") == [f"parent-{i}" for i in range(10)]
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{result['child_pid']}.txt", f"{result['pid']}.txt"])
    assert proc.stderr == ""


# --------------------------------------------------------------------------------------------
# 11. Garbage: unreachable dispatchers are closed and deliver their queue.
# --------------------------------------------------------------------------------------------


class Entry:
    """A weak-referenceable entry, to check the queue lets go of it."""

    def __init__(self, n: int) -> None:
        self.n = n


def os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


def test_unreachable_dispatcher_is_closed_and_delivers() -> None:
    has_proc = os.path.isdir("/proc/self/task")
    threads_before = os_threads() if has_proc else 0
    received: list[int] = []
    d: BackgroundDispatcher[Entry] = BackgroundDispatcher(
        lambda batch: received.extend(e.n for e in batch), ms_delay=60_000
    )
    entries = [Entry(i) for i in range(100)]
    refs = [weakref.ref(e) for e in entries]
    assert d.enqueue_many(entries) == 100
    del entries
    assert d.stats.queued_entries == 100
    d_ref = weakref.ref(d)
    del d
    gc.collect()
    assert d_ref() is None
    assert received == list(range(100))
    # The queue's references to the entries are released, and the worker thread ends.
    assert all(ref() is None for ref in refs)
    if has_proc:
        wait_until(lambda: os_threads() == threads_before, "the worker thread to end")


class Collector:
    """Holds its dispatcher, whose dispatch function is a bound method of the collector: a cycle."""

    def __init__(self, received: list[int]) -> None:
        self.received = received
        self.dispatcher: BackgroundDispatcher[int] = BackgroundDispatcher(self.send, ms_delay=60_000)

    def send(self, entries: list[int]) -> None:
        self.received.extend(entries)


def test_dispatcher_in_a_reference_cycle_is_collected_and_delivers() -> None:
    received: list[int] = []
    collector = Collector(received)
    assert collector.dispatcher.enqueue_many(range(100)) == 100
    d_ref = weakref.ref(collector.dispatcher)
    c_ref = weakref.ref(collector)
    del collector
    assert d_ref() is not None, "not a cycle after all"
    # The collector finds the cycle and runs the dispatcher's finalizer, which begins its
    # shutdown. While it drains, the cycle stays alive (its callbacks are still needed); once
    # drained, a later collection frees it. Weak references are cleared on the first pass.
    gc.collect()
    wait_until(lambda: received == list(range(100)), "the cycle's entries to be delivered")

    def freed() -> bool:
        gc.collect()
        return not any(isinstance(o, Collector) for o in gc.get_objects())

    wait_until(freed, "the cycle to be freed")
    assert d_ref() is None and c_ref() is None


# --------------------------------------------------------------------------------------------
# 12. A normal run leaves nothing on stderr, even in development mode.
# --------------------------------------------------------------------------------------------

QUIET = {
    "close": """
        d = BackgroundDispatcher(send, ms_delay=50)
        d.enqueue_many(range(100))
        assert d.close()
    """,
    "with": """
        with BackgroundDispatcher(send, ms_delay=50) as d:
            d.enqueue_many(range(100))
    """,
    "exit-hook": """
        d = BackgroundDispatcher(send, ms_delay=50)
        d.enqueue_many(range(100))
    """,
    "async": """
        import asyncio

        async def asend(entries):
            await asyncio.sleep(0)
            send(entries)

        async def main():
            async with BackgroundDispatcher(asend, ms_delay=50) as d:
                d.enqueue_many(range(50))
                await d.aflush()
                d.enqueue_many(range(50, 100))

        asyncio.run(main())
    """,
    "async-private-loop": """
        async def asend(entries):
            send(entries)

        d = BackgroundDispatcher(asend, ms_delay=50)
        d.enqueue_many(range(100))
        assert d.close()
    """,
}


@pytest.mark.parametrize("devmode", [False, True], ids=["normal", "devmode"])
@pytest.mark.parametrize("how", list(QUIET))
def test_no_exit_noise(tmp_path: Path, how: str, devmode: bool) -> None:
    out = tmp_path / "out.txt"
    proc = child(QUIET[how], out, env={"PYTHONDEVMODE": "1"} if devmode else {"PYTHONDEVMODE": ""})
    assert proc.returncode == 0, describe(proc)
    assert proc.stderr == ""
    assert proc.stdout == ""
    assert delivered(out) == [str(i) for i in range(100)]
