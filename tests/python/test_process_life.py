"""Process life under load (issue 5, check 7): 50 runs of each way a Python process ends while
four threads enqueue, and of forking while they do. ``process_life_child.py`` is the child; its
docstring says what each scenario does and how the child records what it accepted and what was
delivered.

For every run the test checks: the exit code is the expected one; the run ends within
``HANG_SECONDS`` (else it is killed and counted as a hang); stderr has no crash marker and
nothing but what the scenario itself prints; and, per producer, what was delivered is exactly
what was accepted: nothing lost, nothing twice, nothing that was not accepted, in order. For the
fork scenarios this holds in the parent and in the child, separately (neither delivers the
other's entries).

Expected exit codes, and why:

- ``exit`` 0, ``sys-exit`` 3, ``uncaught`` 1: the script's own; the library's exit hook
  delivers and does not change it.
- ``sigint`` -2: Python's default SIGINT handler raises ``KeyboardInterrupt`` in the main
  thread (signal handlers only ever run there, never in the dispatcher's thread or a producer),
  either inside ``flush()`` (which checks for signals every 50 ms) or between two calls. Nothing
  catches it, so the interpreter prints the traceback, runs the exit hooks (which deliver), and
  then, since Python 3.8, ends itself with SIGINT so that its parent sees "killed by SIGINT" (-2
  here, 130 in a shell), not 1. Exit code 1 would mean a ``KeyboardInterrupt`` caught and
  turned into an ordinary exception, which nothing in the library does.
- ``sigterm`` 143: the child installs the usual handler, ``sys.exit(128 + signum)``, so SIGTERM
  is an ordinary exit and everything accepted is delivered.
- ``sigterm-default`` -15: with the default action the kernel ends the process at once; no code
  runs, so the entries still queued are lost, by design (install a handler, as ``sigterm`` does,
  to deliver them). Checked: the exit code, no crash, and that what was delivered before the kill
  is a clean prefix of each producer's entries (nothing twice, nothing out of order).
- ``os-fork`` and ``mp-fork`` 0, and the fork child 0.

The signal is sent at a random moment (a random delay of up to ``SIGNAL_DELAY_MAX`` seconds,
which picks the moment and synchronises nothing) after the child printed ``ready``, which it
does once all four producers are enqueueing. Runs go ``CONCURRENCY`` at a time. The seed is
printed; ``BD_LIFE_SEED=<n>`` repeats a run.
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from conftest import CRASH_MARKERS

RUNS = 50
CONCURRENCY = 3
HANG_SECONDS = 10.0
SIGNAL_DELAY_MAX = 0.03
CHILD = Path(__file__).with_name("process_life_child.py")

#: scenario -> (expected exit code, the signal the test sends, the last stderr line expected)
SCENARIOS: dict[str, tuple[int, signal.Signals | None, str | None]] = {
    "exit": (0, None, None),
    "sys-exit": (3, None, None),
    "uncaught": (1, None, "RuntimeError: uncaught at top level"),
    "sigint": (-signal.SIGINT, signal.SIGINT, "KeyboardInterrupt"),
    "sigterm": (128 + signal.SIGTERM, signal.SIGTERM, None),
    "sigterm-default": (-signal.SIGTERM, signal.SIGTERM, None),
    "os-fork": (0, None, None),
    "mp-fork": (0, None, None),
}


@dataclass
class Outcome:
    """One run: its figures, and what was wrong with it (nothing, if it passed)."""

    seconds: float = 0.0
    returncode: int | None = None
    hung: bool = False
    accepted: int = 0
    delivered: int = 0
    lost: int = 0
    duplicates: int = 0
    foreign: int = 0
    problems: list[str] = field(default_factory=list)


def read_delivered(path: Path) -> dict[str, list[int]]:
    """``tag -> [i, ...]`` in delivery order, from a ``.delivered`` file."""
    per_tag: dict[str, list[int]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            tag, i = line.split()
            per_tag.setdefault(tag, []).append(int(i))
    return per_tag


def compare(side: str, accepted: dict[str, int], delivered: dict[str, list[int]], outcome: Outcome) -> None:
    """Per tag, delivered must be exactly ``0 .. accepted-1``, in order."""
    for tag in sorted(set(accepted) | set(delivered)):
        want = accepted.get(tag, 0)
        got = delivered.get(tag, [])
        unique = set(got)
        outcome.accepted += want
        outcome.delivered += len(got)
        outcome.duplicates += len(got) - len(unique)
        outcome.lost += sum(1 for i in range(want) if i not in unique)
        outcome.foreign += sum(1 for i in unique if not 0 <= i < want)
        if got != list(range(want)):
            outcome.problems.append(f"{side}, tag {tag}: accepted 0..{want - 1}, delivered {len(got)} ({got[:5]}...)")


def check_prefix(delivered: dict[str, list[int]], outcome: Outcome) -> None:
    """After a kill: each tag's deliveries are 0..k-1 for some k (nothing twice, in order)."""
    for tag, got in delivered.items():
        outcome.delivered += len(got)
        outcome.duplicates += len(got) - len(set(got))
        if got != list(range(len(got))):
            outcome.problems.append(f"tag {tag}: not a clean prefix: {got[:10]}...")


@contextmanager
def started(scenario: str, out: Path, seed: int) -> Iterator[subprocess.Popen[bytes]]:
    with subprocess.Popen(
        [sys.executable, str(CHILD), scenario, str(out), str(seed)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()  # a test failure left it running; leaving the block reaps it


def wait_for_ready(proc: subprocess.Popen[bytes], deadline: float) -> bytes:
    """Reads the child's stdout up to its ``ready`` line; returns what was read."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    seen = b""
    while b"ready\n" not in seen:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        seen += chunk
    return seen


def run_once(scenario: str, seed: int, out: Path) -> Outcome:
    expected_code, sig, last_stderr_line = SCENARIOS[scenario]
    outcome = Outcome()
    rng = random.Random(seed)
    start = time.monotonic()
    deadline = start + HANG_SECONDS
    with started(scenario, out, seed) as proc:
        stdout = b""
        if sig is not None:
            stdout = wait_for_ready(proc, deadline)
            if b"ready\n" not in stdout:
                outcome.problems.append("the child never got ready")
            else:
                time.sleep(rng.uniform(0, SIGNAL_DELAY_MAX))  # picks the moment; not a wait for anything
                proc.send_signal(sig)
        try:
            rest, err = proc.communicate(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            outcome.hung = True
            proc.kill()
            rest, err = proc.communicate()
        outcome.seconds = time.monotonic() - start
        outcome.returncode = proc.returncode
        stdout += rest
    stderr = err.decode(errors="replace")
    tail = f"seed {seed}, exit code {proc.returncode}, stderr:\n{stderr[-2000:]}"
    if outcome.hung:
        outcome.problems.append(f"hung for over {HANG_SECONDS} s ({tail})")
        return outcome
    for marker in CRASH_MARKERS:
        if marker in stderr:
            outcome.problems.append(f"{marker!r} in stderr ({tail})")
    if proc.returncode != expected_code:
        outcome.problems.append(f"exit code {proc.returncode}, expected {expected_code} ({tail})")
    if last_stderr_line is None:
        if stderr:
            outcome.problems.append(f"unexpected stderr ({tail})")
    elif stderr.count("Traceback") != 1 or stderr.rstrip().splitlines()[-1:] != [last_stderr_line]:
        outcome.problems.append(f"stderr is not the one traceback ending in {last_stderr_line!r} ({tail})")

    parent = proc.pid
    if scenario == "sigterm-default":
        check_prefix(read_delivered(out / f"{parent}.delivered"), outcome)
        return outcome
    sides = {parent: "parent"}
    if scenario in ("os-fork", "mp-fork"):
        lines = stdout.decode().strip().splitlines()
        info: dict[str, Any] = json.loads(lines[-1]) if lines else {}
        if info.get("child_exit") != 0 or not info.get("producers_finished"):
            outcome.problems.append(f"fork: {info} ({tail})")
        if "child" in info:
            sides[info["child"]] = "fork child"
    for pid, side in sides.items():
        report = out / f"{pid}.accepted"
        if not report.exists():
            outcome.problems.append(f"{side}: no report of what it accepted ({tail})")
            continue
        accepted = json.loads(report.read_text())
        counts = accepted["counts"]
        per_tag = {str(t): n for t, n in (counts.items() if isinstance(counts, dict) else enumerate(counts))}
        if side == "parent":
            if not accepted["finished"]:
                outcome.problems.append(f"parent: the producers did not stop ({tail})")
            if accepted["enqueued"] != sum(per_tag.values()) or accepted["dispatched"] != accepted["enqueued"]:
                outcome.problems.append(f"parent: stats disagree with the producers: {accepted}")
        elif accepted["inherited"] != [0, 0, 0, 0]:
            outcome.problems.append(f"fork child: inherited counters {accepted['inherited']}, expected none")
        compare(side, per_tag, read_delivered(out / f"{pid}.delivered"), outcome)
    unexpected = {p.name for p in out.iterdir()} - {
        f"{pid}.{kind}" for pid in sides for kind in ("accepted", "delivered")
    }
    if unexpected:
        outcome.problems.append(f"files from unexpected processes: {sorted(unexpected)}")
    return outcome


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs POSIX signals and fork")
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_process_life(scenario: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    master = int(os.environ.get("BD_LIFE_SEED", random.randrange(1 << 30)))
    seeds = [random.Random(master + n).randrange(1 << 30) for n in range(RUNS)]
    dirs = [tmp_path / f"run{n}" for n in range(RUNS)]
    for d in dirs:
        d.mkdir()
    start = time.monotonic()
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        outcomes = list(pool.map(run_once, [scenario] * RUNS, seeds, dirs))
    elapsed = time.monotonic() - start

    total = Outcome()
    for o in outcomes:
        total.accepted += o.accepted
        total.delivered += o.delivered
        total.lost += o.lost
        total.duplicates += o.duplicates
        total.foreign += o.foreign
        total.hung = total.hung or o.hung
    hangs = sum(o.hung for o in outcomes)
    codes = Counter(o.returncode for o in outcomes)
    slowest = max(o.seconds for o in outcomes)
    accepted = "unknown (killed)" if scenario == "sigterm-default" else str(total.accepted)
    with capsys.disabled():
        print(
            f"\n[process life] {scenario}: {RUNS} runs, accepted {accepted}, delivered {total.delivered}, "
            f"lost {total.lost if scenario != 'sigterm-default' else 'n/a'}, duplicates {total.duplicates}, "
            f"not accepted {total.foreign}, hangs {hangs}, exit codes {dict(codes)}, "
            f"slowest run {slowest:.2f} s, {elapsed:.1f} s in all (BD_LIFE_SEED={master})"
        )
    problems = [f"run {n}: {p}" for n, o in enumerate(outcomes) for p in o.problems]
    assert not problems, f"{len(problems)} problems, first ones:\n" + "\n".join(problems[:5])
    assert total.lost == total.duplicates == total.foreign == hangs == 0
    if scenario != "sigterm-default":
        assert total.accepted > 0 and total.delivered == total.accepted
