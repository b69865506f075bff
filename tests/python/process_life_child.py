"""The child process of ``test_process_life.py``: four threads enqueue into one dispatcher while
the main thread ends the process in one of the scenario's ways.

    python process_life_child.py SCENARIO OUT_DIR SEED

Entries are ``(tag, i)``: ``tag`` is the producer thread (0-3), or ``"c"`` for what a fork child
enqueues; ``i`` counts up from 0 in each tag. The dispatch function appends every batch it gets
to ``OUT_DIR/<pid>.delivered``, one ``tag i`` line per entry, so that the test sees exactly what
was delivered before the process ended. The queue is unbounded, so an enqueue is refused only
once the dispatcher is closed: each producer stops at its first refusal (or when told to), and
what it accepted is exactly ``0 .. count-1``. Those counts go to ``OUT_DIR/<pid>.accepted``
(JSON), written by an exit hook that runs after the library's own (which delivers).

Scenarios (what the main thread does once the producers are going):

- ``exit``: returns without ``close()``;  ``sys-exit``: ``sys.exit(3)``;  ``uncaught``: raises;
- ``sigint``, ``sigterm``, ``sigterm-default``: prints ``ready`` and waits (in ``flush()``
  calls) for the test to send the signal; ``sigterm`` first installs the usual handler that
  turns SIGTERM into ``SystemExit(143)``, ``sigterm-default`` keeps the default action (the
  kernel ends the process: nothing can run, so what is queued is lost by design);
- ``os-fork``, ``mp-fork``: forks (``os.fork()`` or a ``multiprocessing`` fork-context
  process) while the producers run; the fork child enqueues ``CHILD_ENTRIES`` entries itself and
  exits without ``close()``; then the parent stops its producers and exits without ``close()``.

The random moment is a per-thread count drawn from SEED: the main thread waits (on events, no
polling) until every producer has got that far.
"""

from __future__ import annotations

import atexit
import json
import os
import random
import signal
import sys
import threading
import time
import warnings
from typing import Any

#: Entries a fork child enqueues.
CHILD_ENTRIES = 500
#: How long a child waits for anything before giving up with exit code NO_SIGNAL or similar:
#: below the test's 10 s hang limit, so that a missing signal is reported, not a hang.
WAIT = 8.0
#: Exit code when the signal the test should have sent never came.
NO_SIGNAL = 9
#: Exit code of a fork child that found something wrong.
CHILD_BROKEN = 4
#: Producers pause this long every PACE entries: keeps each run to a few thousand entries (the
#: test reads them all back), which is pacing, not synchronisation.
PACE = 32
PACE_SECONDS = 0.0002
PRODUCERS = 4


def main() -> int:
    scenario, out, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rng = random.Random(seed)
    parent_pid = os.getpid()
    stop = threading.Event()
    done = [threading.Event() for _ in range(PRODUCERS)]
    counts = [0] * PRODUCERS

    def report() -> None:
        # Runs after the library's exit hook (registered later, at import: atexit runs the last
        # registered first), so the dispatcher is closed and the producers stop at their next
        # enqueue. Only in the process that started them (a fork child inherits this hook).
        if os.getpid() != parent_pid:
            return
        finished = all(event.wait(WAIT) for event in done)
        stats = dispatcher.stats
        write_json(
            out,
            {
                "counts": counts,
                "finished": finished,
                "enqueued": stats.enqueued,
                "dispatched": stats.dispatched,
                "lost": stats.failed + stats.evicted + stats.abandoned,
            },
        )

    atexit.register(report)  # before the import below, so that it runs after the library's hook
    from background_dispatcher import BackgroundDispatcher

    def send(entries: list[tuple[Any, int]]) -> None:
        with open(os.path.join(out, f"{os.getpid()}.delivered"), "a") as f:
            f.write("".join(f"{tag} {i}\n" for tag, i in entries))

    dispatcher: BackgroundDispatcher[tuple[Any, int]] = BackgroundDispatcher(send, ms_delay=2, max_queue_entries=None)
    targets = [rng.randrange(20, 600) for _ in range(PRODUCERS)]
    reached = [threading.Event() for _ in range(PRODUCERS)]

    def produce(t: int) -> None:
        i = 0
        while not stop.is_set():
            if not dispatcher.enqueue((t, i)):
                break  # closed: every later enqueue is refused too
            i += 1
            if i == targets[t]:
                reached[t].set()
            if i % PACE == 0:
                time.sleep(PACE_SECONDS)
        counts[t] = i
        done[t].set()

    # Daemon threads: the interpreter does not wait for them, so they are still enqueueing when
    # the process ends (and at exit the library's hook closes the dispatcher under them).
    for t in range(PRODUCERS):
        threading.Thread(target=produce, args=(t,), daemon=True).start()
    if not all(event.wait(WAIT) for event in reached):
        print("the producers did not get going", file=sys.stderr)
        return 8

    if scenario == "exit":
        return 0
    if scenario == "sys-exit":
        sys.exit(3)
    if scenario == "uncaught":
        raise RuntimeError("uncaught at top level")
    if scenario in ("sigint", "sigterm", "sigterm-default"):
        if scenario == "sigterm":
            signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
        print("ready", flush=True)
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            dispatcher.flush(timeout=0.5)  # the signal lands in here, or between two calls
        return NO_SIGNAL
    if scenario in ("os-fork", "mp-fork"):
        info = fork_and_wait(scenario, out, dispatcher)
        stop.set()
        finished = all(event.wait(WAIT) for event in done)
        print(json.dumps({**info, "producers_finished": finished}), flush=True)
        return 0
    raise ValueError(f"unknown scenario {scenario!r}")


def write_json(out: str, data: dict[str, Any]) -> None:
    with open(os.path.join(out, f"{os.getpid()}.accepted"), "w") as f:
        json.dump(data, f)


def fork_child(out: str, dispatcher: Any) -> None:
    """The fork child's side: a working, empty dispatcher; enqueue, report, leave without close()."""
    s = dispatcher.stats
    inherited = [s.enqueued, s.dispatched, s.queued_entries, s.in_flight_entries]
    accepted = 0
    for i in range(CHILD_ENTRIES):
        accepted += dispatcher.enqueue(("c", i))
    write_json(out, {"counts": {"c": accepted}, "inherited": inherited})


def fork_and_wait(scenario: str, out: str, dispatcher: Any) -> dict[str, Any]:
    """Forks while the producers run; returns the child's pid and exit code (None: it hung)."""
    if scenario == "os-fork":
        pid = os.fork()
        if pid == 0:
            try:
                fork_child(out, dispatcher)
            except BaseException:  # noqa: BLE001 - a fork child must never return into main()
                os._exit(CHILD_BROKEN)
            sys.exit(0)  # a normal interpreter exit: the library's exit hook delivers
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return {"child": pid, "child_exit": os.waitstatus_to_exitcode(status)}
            time.sleep(0.002)  # polling a child process: there is no event to wait on
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        return {"child": pid, "child_exit": None}

    import multiprocessing

    process = multiprocessing.get_context("fork").Process(target=fork_child, args=(out, dispatcher))
    process.start()  # the child leaves through multiprocessing's finalizers, which deliver
    process.join(WAIT)
    if process.is_alive():
        process.kill()
        process.join()
        return {"child": process.pid, "child_exit": None}
    return {"child": process.pid, "child_exit": process.exitcode}


if __name__ == "__main__":
    # CPython 3.12+ warns when a process with threads forks: forking one is the point here.
    warnings.filterwarnings("ignore", "This process .* is multi-threaded", DeprecationWarning)
    sys.exit(main())
