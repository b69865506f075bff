#!/usr/bin/env python3
"""make bench: background-dispatcher against its peers, side by side, into benchmarks/RESULTS.md.

Every comparison runs the peers in the same process (Rust) or the same run, alternating (C vs
Rust), on the same workload, and reports ratios next to absolute figures: the machine is a
shared VM whose absolute numbers drift by tens of percent between minutes, so the ratios of
neighbouring measurements are what mean something. Medians throughout.

usage: run.py [--quick]      (--quick: about half a minute; the full run two to three minutes)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "target" / "release" / "dispatcher-bench"
LIB_DIR = ROOT / "target" / "release"
BUILD = ROOT / "build"
C_BENCH = BUILD / "bench_enqueue"
BENCH_VENV = BUILD / "bench-venv"
RESULTS = ROOT / "benchmarks" / "RESULTS.md"


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], **kw: Any) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT, **kw).stdout


def run_json(cmd: list[str], **kw: Any) -> list[dict[str, Any]]:
    return [json.loads(line) for line in run(cmd, **kw).splitlines() if line.startswith("{")]


def median(xs: list[float]) -> float:
    return statistics.median(xs)


# --- preparation ----------------------------------------------------------------------------


def soname() -> str:
    """The C library's soname, as dispatcher-ffi/build.rs sets it: .so.0.MINOR while 0.x."""
    header = (ROOT / "include" / "background_dispatcher.h").read_text()
    major, minor = (re.search(rf"#define BD_VERSION_{part} (\d+)", header) for part in ("MAJOR", "MINOR"))
    assert major and minor, "BD_VERSION_MAJOR/MINOR not found in the header"
    abi = f"0.{minor[1]}" if major[1] == "0" else major[1]
    return f"libbackground_dispatcher.so.{abi}"


def build() -> None:
    log("building (release)")
    run(["cargo", "build", "--release", "--quiet", "-p", "dispatcher-bench", "-p", "dispatcher-ffi"])
    # The C bench records the soname (DT_NEEDED); give it to the freshly built library, as
    # `make build` does.
    link = LIB_DIR / soname()
    link.unlink(missing_ok=True)
    link.symlink_to("libbackground_dispatcher.so")
    BUILD.mkdir(exist_ok=True)
    cc = os.environ.get("CC", "cc")
    run(
        [
            cc,
            "-std=c11",
            "-O2",
            "-Wall",
            "-Wextra",
            f"-I{ROOT / 'include'}",
            "benchmarks/c/bench_enqueue.c",
            "-o",
            str(C_BENCH),
            f"-L{LIB_DIR}",
            "-lbackground_dispatcher",
            f"-Wl,-rpath,{LIB_DIR}",
            "-lpthread",
        ]
    )


def bench_python() -> Path:
    """A venv for the Python peers only (pinned in benchmarks/requirements.txt), with our wheel."""
    python = BENCH_VENV / "bin" / "python"
    if not python.exists():
        log("creating the bench venv (opentelemetry-sdk and the other peers live only there)")
        run([sys.executable, "-m", "venv", str(BENCH_VENV)])
        run([str(python), "-m", "pip", "install", "--quiet", "-r", "benchmarks/requirements.txt"])
    wheels = BUILD / "wheels"
    shutil.rmtree(wheels, ignore_errors=True)
    maturin = Path(sys.executable).parent / "maturin"
    log("building the Python wheel")
    run([str(maturin), "build", "--release", "--quiet", "-m", "bindings/python/Cargo.toml", "-o", str(wheels)])
    wheel = next(wheels.glob("*.whl"))
    run([str(python), "-m", "pip", "install", "--quiet", "--force-reinstall", "--no-deps", str(wheel)])
    return python


def machine() -> dict[str, str]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cores": str(os.cpu_count()),
        "cpu": model,
        "kernel": platform.release(),
        "rustc": run(["rustc", "--version"]).strip(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


# --- the benchmarks -------------------------------------------------------------------------


def enqueue(quick: bool) -> list[dict[str, Any]]:
    rows = []
    rounds = "3" if quick else "9"
    sizes = [100] if quick else [100, 16, 1024]
    for size in sizes:
        per_round = {16: 2_000_000, 100: 2_000_000, 1024: 200_000}[size] // (4 if quick else 1)
        log(f"enqueue, {size}-byte entries, P = 1, 2, 4, 8")
        rows += run_json(
            [
                str(BENCH),
                "enqueue",
                "--sizes",
                str(size),
                "--threads",
                "1,2,4,8",
                "--rounds",
                rounds,
                "--per-round",
                str(per_round),
            ]
        )
    return rows


def c_vs_rust(quick: bool) -> dict[str, float]:
    log("C bd_enqueue vs the Rust API, alternating runs")
    c, rust = [], []
    for _ in range(2 if quick else 5):
        c += [r["ns_per_op"] for r in run_json([str(C_BENCH), "1", "7", "2000000", "100"])]
        rust += [
            r["ns_per_op"]
            for r in run_json(
                [str(BENCH), "enqueue", "--sinks", "ours", "--threads", "1", "--rounds", "7", "--per-round", "2000000"]
            )
        ]
    return {"c_ns": median(c), "rust_ns": median(rust), "ratio": median(c) / median(rust)}


def latency(quick: bool) -> list[dict[str, Any]]:
    log("per-call latency")
    return run_json([str(BENCH), "latency", "--threads", "1,8", "--calls", "200000" if quick else "1000000"])


def memory(quick: bool) -> dict[str, float]:
    log("memory per queued entry (fresh processes)")
    out = {}
    for sink in ("ours", "crossbeam"):
        xs = [run_json([str(BENCH), "memory", "--sinks", sink])[0]["bytes_per_entry"] for _ in range(1 if quick else 3)]
        out[sink] = median(xs)
    return out


def timing(quick: bool) -> list[dict[str, Any]]:
    rows = []
    for ms, seconds in ((10, 1.5 if quick else 4), (100, 3 if quick else 8)):
        log(f"dispatch timing, ms_delay {ms}")
        runs = [
            run_json([str(BENCH), "timing", "--ms-delay", str(ms), "--seconds", str(seconds)])[0]
            for _ in range(1 if quick else 3)
        ]
        merged = {k: median([r[k] for r in runs]) for k in runs[0] if k != "bench"}
        merged["runs"] = len(runs)
        merged["starts_too_close"] = sum(r["starts_too_close"] for r in runs)
        rows.append(merged)
    return rows


def syscalls(quick: bool) -> dict[str, Any]:
    strace = shutil.which("strace")
    if strace is None:
        return {"note": "not measured: strace is not installed"}
    log("syscalls in steady state (strace -f -c)")
    with tempfile.NamedTemporaryFile(suffix=".txt") as out:
        lines = run([strace, "-f", "-c", "-o", out.name, str(BENCH), "steady", "--seconds", "1" if quick else "3"])
        enqueues = json.loads(lines.splitlines()[-1])["enqueues"]
        table = Path(out.name).read_text()
    total = next(line for line in table.splitlines() if line.strip().endswith("total"))
    calls = int(re.split(r"\s+", total.strip())[2 if len(total.split()) >= 5 else 1])
    return {"enqueues": enqueues, "syscalls": calls, "per_1000": calls / enqueues * 1000}


def idle(quick: bool) -> dict[str, Any]:
    log("idle CPU")
    return run_json([str(BENCH), "idle", "--seconds", "2" if quick else "5"])[0]


def python_enqueue(quick: bool, python: Path) -> list[dict[str, Any]]:
    log("Python enqueue against OpenTelemetry, queue.Queue and deque.append")
    args = [str(python), "benchmarks/python/bench_enqueue.py", "--threads", "1,4", "--rounds", "3" if quick else "9"]
    return run_json(args + (["--quick"] if quick else []))


# --- the report -----------------------------------------------------------------------------


def mark(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def report(m: dict[str, str], r: dict[str, Any], quick: bool) -> tuple[str, list[tuple[str, bool]]]:
    enq = [x for x in r["enqueue"] if x["bench"] == "enqueue"]

    def row(sink: str, size: int, p: int) -> dict[str, Any]:
        return next(x for x in enq if x["sink"] == sink and x["size"] == size and x["threads"] == p)

    targets: list[tuple[str, bool]] = []
    lines = [
        "# Benchmark results",
        "",
        f"`make bench{' QUICK=1' if quick else ''}` on {m['date']}. "
        f"Machine: {m['cores']} cores, {m['cpu']}, Linux {m['kernel']}, "
        f"{m['rustc']}, CPython {m['python']}. A shared VM: absolute figures drift between runs; ratios are "
        "taken between neighbouring measurements in the same run (medians of per-round ratios).",
        "",
        "## 1. Rust enqueue, P producer threads on one dispatcher (`ms_delay` 10 ms)",
        "",
        "ns per enqueue as one producer sees it (wall time / its enqueues, median over rounds), and "
        "aggregate M entries/s. `ratio` = ours / this sink, per round, median (below 1: ours is faster). "
        "Sinks: `crossbeam` = an unbounded crossbeam-channel of `Vec<u8>` drained every 10 ms; "
        "`mutex_vec` = `Mutex<Vec<Vec<u8>>>` swapped every 10 ms; `floor` = one uncontended lock/unlock "
        "plus a 104-byte copy into a pre-allocated buffer. Every consumer touches every byte.",
        "",
    ]
    for size in sorted({x["size"] for x in enq}, key=lambda s: (s != 100, s)):
        lines += [
            f"**{size}-byte entries**",
            "",
            "| P | sink | ns/enqueue | M entries/s | ratio ours/this |",
            "|---|---|---|---|---|",
        ]
        for p in (1, 2, 4, 8):
            for sink in ("ours", "crossbeam", "mutex_vec", "floor"):
                x = row(sink, size, p)
                lines.append(f"| {p} | {sink} | {x['ns_per_op']:.1f} | {x['mops']:.1f} | {x['ours_over_this']:.3f} |")
        lines.append("")
    t1a = row("crossbeam", 100, 1)["ours_over_this"]
    t1b = row("floor", 100, 1)["ours_over_this"]
    targets.append((f"Rust enqueue, P = 1: ≤ 0.25 × crossbeam (measured {t1a:.3f})", t1a <= 0.25))
    targets.append((f"Rust enqueue, P = 1: ≤ 2 × the floor (measured {t1b:.2f})", t1b <= 2.0))
    ours1 = row("ours", 100, 1)["mops"]
    for p in (2, 4, 8):
        vs_cb = 1 / row("crossbeam", 100, p)["ours_over_this"]
        vs_self = row("ours", 100, p)["mops"] / ours1
        targets.append((f"Aggregate at P = {p}: ≥ 3 × crossbeam (measured {vs_cb:.2f} ×)", vs_cb >= 3))
        targets.append((f"Aggregate at P = {p}: ≥ 0.8 × our P = 1 figure (measured {vs_self:.2f} ×)", vs_self >= 0.8))

    cvr = r["c_vs_rust"]
    lines += [
        "## 2. C `bd_enqueue` vs the Rust API",
        "",
        "The C program `benchmarks/c/bench_enqueue.c` (calling `bd_enqueue` through the shared library) and the "
        "Rust bench, same protocol, P = 1, 100-byte entries, runs alternating; medians of the runs' medians.",
        "",
        "| path | ns/enqueue |",
        "|---|---|",
        f"| C `bd_enqueue` | {cvr['c_ns']:.1f} |",
        f"| Rust `Dispatcher::enqueue` | {cvr['rust_ns']:.1f} |",
        f"| ratio C / Rust | {cvr['ratio']:.3f} |",
        "",
    ]
    targets.append((f"C bd_enqueue ≤ 1.15 × the Rust API (measured {cvr['ratio']:.3f})", cvr["ratio"] <= 1.15))

    lat = r["latency"]
    lines += [
        "## 3. Per-call latency of one producer (100-byte entries, ns, rdtsc around each call)",
        "",
        "The last column counts the page faults the measured thread took per 1 000 calls: they, and "
        "preemption, are what the tails are made of.",
        "",
        "| P | sink | p50 | p99 | p99.9 | p99.99 | max | faults / 1000 calls |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for x in lat:
        lines.append(
            f"| {x['threads']} | {x['sink']} | {x['p50']:.0f} | {x['p99']:.0f} | {x['p999']:.0f} | "
            f"{x['p9999']:.0f} | {x['max']:.0f} | {x['faults_per_1000']:.1f} |"
        )
    lines.append("")
    ours8 = next(x for x in lat if x["sink"] == "ours" and x["threads"] == 8)
    cb8 = next(x for x in lat if x["sink"] == "crossbeam" and x["threads"] == 8)
    t = ours8["p999"] / cb8["p999"]
    targets.append((f"P = 8: p99.9 ≤ 0.1 × crossbeam's (measured {t:.3f})", t <= 0.1))

    py = r["python"]
    lines += [
        "## 4. Python enqueue (CPython, GIL build)",
        "",
        "ns per call per thread, including the interpreter's `for` loop, median over interleaved rounds; "
        "`ratio` = ours_bytes / this. Peers installed only in the bench venv (`benchmarks/requirements.txt`). "
        "The dispatch functions and the OpenTelemetry exporter do no work per entry, so that this measures "
        "the hand-over, not the consumer's share of the GIL.",
        "",
        "| threads | candidate | ns/call | calls/s | ratio ours_bytes/this |",
        "|---|---|---|---|---|",
    ]
    for x in py:
        lines.append(
            f"| {x['threads']} | {x['sink']} | {x['ns_per_call']:.1f} | {x['calls_per_s'] / 1e6:.2f} M "
            f"| {x['ours_bytes_over_this']:.3f} |"
        )
    lines.append("")

    def pyrow(sink: str) -> dict[str, Any]:
        return next(x for x in py if x["sink"] == sink and x["threads"] == 1)

    vs_deque = pyrow("deque_append")["ours_bytes_over_this"]
    vs_otel = pyrow("otel")["ours_bytes_over_this"]
    targets.append((f"Python enqueue(bytes), 1 thread: ≤ 2 × deque.append (measured {vs_deque:.2f})", vs_deque <= 2))
    targets.append(
        (f"Python enqueue(bytes), 1 thread: ≤ 0.15 × OpenTelemetry (measured {vs_otel:.3f})", vs_otel <= 0.15)
    )

    mem = r["memory"]
    lines += [
        "## 5. Memory per queued 100-byte entry (RSS growth, 1 M entries queued, fresh process)",
        "",
        "| sink | bytes/entry |",
        "|---|---|",
        f"| ours | {mem['ours']:.1f} |",
        f"| crossbeam | {mem['crossbeam']:.1f} |",
        "",
    ]
    targets.append((f"Memory ≤ 112 B per queued 100-byte entry (measured {mem['ours']:.1f})", mem["ours"] <= 112))

    lines += [
        "## 6. Dispatch timing (native callback, steady load of ~500 k entries/s)",
        "",
        "Lateness of each start against its window end (the first entry's enqueue time + `ms_delay`, or the "
        "previous start + `ms_delay` if later), in µs; the mean period against `ms_delay`; starts closer than "
        "`ms_delay`. Medians over runs; the first and last batch of each run excluded.",
        "",
        "| ms_delay | batches | late p50 | late p99 | late max | mean period (ms) | starts too close |",
        "|---|---|---|---|---|---|---|",
    ]
    for x in r["timing"]:
        lines.append(
            f"| {x['ms_delay']:.0f} | {x['batches']:.0f} | {x['late_p50_us']:.0f} | {x['late_p99_us']:.0f} | "
            f"{x['late_max_us']:.0f} | {x['mean_period_ms']:.3f} | {x['starts_too_close']} |"
        )
        d = x["ms_delay"]
        targets.append(
            (f"ms_delay {d:.0f}: 0 starts closer than ms_delay ({x['starts_too_close']})", x["starts_too_close"] == 0)
        )
        allowed = 1000 + 0.05 * d * 1000
        targets.append(
            (
                f"ms_delay {d:.0f}: p99 lateness ≤ {allowed / 1000:.2f} ms (measured {x['late_p99_us'] / 1000:.2f} ms)",
                x["late_p99_us"] <= allowed,
            )
        )
        off = abs(x["mean_period_ms"] - d) / d
        targets.append((f"ms_delay {d:.0f}: mean period within 1 % (measured {off * 100:.2f} %)", off <= 0.01))
    lines.append("")

    sc, idle_ = r["syscalls"], r["idle"]
    lines += ["## 7. Syscalls and idle", ""]
    if "per_1000" in sc:
        lines.append(
            f"Steady single-producer load under `strace -f -c`: {sc['syscalls']} syscalls (all threads, "
            f"process start included) for {sc['enqueues']} enqueues = **{sc['per_1000']:.4f} per 1 000 enqueues**."
        )
        targets.append((f"Syscalls < 1 per 1 000 enqueues (measured {sc['per_1000']:.4f})", sc["per_1000"] < 1))
    else:
        lines.append(sc["note"])
    cpu_per_5s = idle_["cpu_us"] / idle_["seconds"] * 5 / 1000
    lines += [
        "",
        f"An idle dispatcher (one entry delivered, then nothing): {idle_['cpu_us']} µs of process CPU over "
        f"{idle_['seconds']} s, {idle_['wakeups']} worker wake-up(s).",
        "",
    ]
    targets.append((f"Idle CPU < 1 ms per 5 s (measured {cpu_per_5s:.3f} ms)", cpu_per_5s < 1))

    lines += ["## Targets", "", "| target | result |", "|---|---|"]
    lines += [f"| {name} | {mark(ok)} |" for name, ok in targets]
    lines.append("")
    return "\n".join(lines), targets


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="about half a minute: fewer rounds and sizes")
    parser.add_argument("--output", default=str(RESULTS))
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="re-render the report from build/bench-results.json (after editing NOTES.md)",
    )
    args = parser.parse_args()
    start = time.monotonic()
    raw = BUILD / "bench-results.json"
    if args.report_only:
        saved = json.loads(raw.read_text())
        m, quick = saved.pop("machine"), saved.pop("quick", False)
        results = saved
    else:
        build()
        python = bench_python()
        m, quick = machine(), args.quick
        results = {
            "enqueue": enqueue(quick),
            "c_vs_rust": c_vs_rust(quick),
            "latency": latency(quick),
            "memory": memory(quick),
            "timing": timing(quick),
            "syscalls": syscalls(quick),
            "idle": idle(quick),
            "python": python_enqueue(quick, python),
        }
    text, targets = report(m, results, quick)
    notes = ROOT / "benchmarks" / "NOTES.md"
    if notes.exists():
        text += "\n" + notes.read_text()
    Path(args.output).write_text(text)
    if not args.report_only:
        BUILD.mkdir(exist_ok=True)
        raw.write_text(json.dumps({"machine": m, "quick": quick, **results}, indent=1))
    met = sum(ok for _, ok in targets)
    log(f"{met}/{len(targets)} targets met; wrote {args.output} in {time.monotonic() - start:.0f} s")
    for name, ok in targets:
        print(f"{'met    ' if ok else 'NOT MET'}  {name}")


if __name__ == "__main__":
    main()
