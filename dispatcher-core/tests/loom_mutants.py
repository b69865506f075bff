#!/usr/bin/env python3
"""Negative controls for the loom models: seeds known bugs into the engine and checks that
tests/loom_handoff.rs catches each one.

A model that passes proves something only if it fails when the protocol is broken. Each
mutant below is a small edit of the real source (each original text must occur exactly once,
so a mutant that no longer applies fails loudly instead of passing silently). It is applied to
a scratch copy of the workspace under target/loom-mutants/ -- the working tree is never
touched -- and the model named beside it must then fail.

Run by `make test-loom`, after the models. Prints one line per mutant with what loom reported.

Not here: `if st.drained_after_close` -> `if st.closing` at the worker's exit. It looks like
"exit before the last collection", but it is an equivalent mutant: `closing` only changes
under the state lock, and a round started in the same `plan` call as the exit check was the
last collection whenever `closing` is set, so the two conditions never differ there.
"""

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRATCH = ROOT / "target" / "loom-mutants"
# Minutes per mutant at most: a caught bug fails within seconds; this only bounds a hang.
TIMEOUT_S = 600

# (name, file, [(original, mutated), ...], model that must fail, why it must)
MUTANTS = [
    (
        "worker exits as soon as shutdown begins",
        "src/worker.rs",
        [
            (
                "            if self.flight.count > 0 {\n",
                "            if st.closing {\n                return Step::Exit;\n            }\n"
                "            if self.flight.count > 0 {\n",
            )
        ],
        "shutdown_racing_two_producers_drains_everything_accepted",
        "entries accepted before closing are never dispatched",
    ),
    (
        "closed checked before the shard lock",
        "src/engine.rs",
        [
            (
                "        let mut shard = lock(&cell.shard);\n        loop {\n",
                "        if inner.closed.load(Ordering::SeqCst) {\n"
                "            return Err(EnqueueError::Closed.into());\n        }\n"
                "        let mut shard = lock(&cell.shard);\n        loop {\n",
            ),
            ("            if inner.closed.load(Ordering::Relaxed) {", "            if false {"),
        ],
        "shutdown_racing_two_producers_drains_everything_accepted",
        "an enqueue that passed the check before the final collection is accepted and lost",
    ),
    (
        "flush done when its round starts, not when it ends",
        "src/worker.rs",
        [
            (
                "                    self.round = Some(st.flush_requested);\n",
                "                    self.round = Some(st.flush_requested);\n"
                "                    st.flush_done = st.flush_requested;\n"
                "                    inner.state_cv.notify_all();\n",
            )
        ],
        "flush_returns_after_what_was_enqueued_before_it",
        "flush returns before its entry is dispatched",
    ),
    (
        "a full batch does not wake the worker",
        "src/engine.rs",
        [
            (
                "            wake |= inner.approx.appended(&mut shard.unreported, charge);",
                "            inner.approx.appended(&mut shard.unreported, charge);",
            )
        ],
        "a_full_batch_wakes_the_sleeping_worker",
        "the sleeping worker is never woken: deadlock",
    ),
    (
        "a blocked producer does not re-check for room after registering",
        "src/engine.rs",
        [
            (
                "            if inner.pool.deficit(charge) != (0, 0) && !inner.closed.load(Ordering::SeqCst) {",
                "            if !inner.closed.load(Ordering::SeqCst) {",
            )
        ],
        "a_blocked_producer_is_woken_when_room_is_freed",
        "room freed before the waiter registered wakes no one: deadlock",
    ),
    (
        "the worker keeps its engine reference",
        "src/worker.rs",
        [("    drop(holder);\n}", "    std::mem::forget(holder);\n}")],
        "the_last_handle_dropped_on_any_thread_drains_and_frees",
        "the engine outlives its last handle",
    ),
]


def scratch_workspace(dest: Path, crate: str) -> Path:
    """A workspace of the core crate alone, with the lock file; returns the crate's copy.

    The crate sits at `crate` inside it, a path unique to the mutant: cargo names a path
    crate's artifacts after its path relative to the workspace root, and the dependencies are
    shared with `make test-loom`'s target directory, so a copy at `dispatcher-core` would
    overwrite the real crate's artifacts there and pass for them.
    """
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(
        ROOT / "dispatcher-core",
        dest / crate,
        ignore=shutil.ignore_patterns("target", "__pycache__"),
    )
    shutil.copy(ROOT / "Cargo.lock", dest / "Cargo.lock")
    manifest = (ROOT / "Cargo.toml").read_text()
    manifest = re.sub(r"(?m)^members = .*$", f'members = ["{crate}"]', manifest)
    manifest = re.sub(r"(?m)^default-members = .*$", f'default-members = ["{crate}"]', manifest)
    (dest / "Cargo.toml").write_text(manifest)
    return dest / crate


def reported(output: str) -> str:
    """The message of the first panic: what loom found."""
    lines = output.splitlines()
    for i, line in enumerate(lines):
        if "panicked at" in line and i + 1 < len(lines):
            return lines[i + 1].strip()[:200]
    return "(no panic message found)"


def main() -> int:
    env = dict(os.environ)
    env["RUSTFLAGS"] = (env.get("RUSTFLAGS", "") + " --cfg loom").strip()
    # The dependencies are built once, in the same directory as `make test-loom`'s.
    env["CARGO_TARGET_DIR"] = str(ROOT / "target" / "loom")
    env.setdefault("LOOM_MAX_PREEMPTIONS", "2")
    caught = 0
    started = time.monotonic()
    for name, rel, edits, model, why in MUTANTS:
        slug = re.sub(r"\W+", "-", name)
        dest = SCRATCH / slug
        path = scratch_workspace(dest, f"mutant-{slug}") / rel
        source = path.read_text()
        for original, mutated in edits:
            count = source.count(original)
            if count != 1:
                print(f"MUTANT DOES NOT APPLY: {name}: {rel} has {original!r} {count} times")
                return 1
            source = source.replace(original, mutated)
        path.write_text(source)
        t0 = time.monotonic()
        try:
            run = subprocess.run(
                [
                    "cargo",
                    "test",
                    "--offline",
                    "--package",
                    "dispatcher-core",
                    "--profile",
                    "loom",
                    "--test",
                    "loom_handoff",
                    "--",
                    "--exact",
                    model,
                ],
                cwd=dest,
                env=env,
                capture_output=True,
                text=True,
                timeout=TIMEOUT_S,
            )
            output, code = run.stdout + run.stderr, run.returncode
        except subprocess.TimeoutExpired:
            output, code = "", None
        took = time.monotonic() - t0
        if code is None:
            verdict = f"NOT CAUGHT (hung over {TIMEOUT_S} s)"
        elif "error[" in output or "could not compile" in output:
            print(output[-3000:])
            verdict = "MUTANT DOES NOT COMPILE"
        elif code != 0 and f"thread '{model}'" in output and "panicked" in output:
            # A model that fails may also abort while unwinding through loom: the first panic
            # (printed before) is the finding.
            verdict = "caught"
            caught += 1
        else:
            verdict = "NOT CAUGHT (the model passed)"
        print(
            f"loom mutant '{name}' ({why}): {verdict} by {model} in {took:.1f} s"
            + (f": {reported(output)}" if verdict == "caught" else "")
        )
        shutil.rmtree(dest)
    total = len(MUTANTS)
    print(f"loom mutants: {caught} of {total} caught, {total - caught} missed, {time.monotonic() - started:.0f} s")
    return 0 if caught == total else 1


if __name__ == "__main__":
    sys.exit(main())
