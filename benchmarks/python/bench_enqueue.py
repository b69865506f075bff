"""Python enqueue cost: background_dispatcher against what a Python user would pick instead.

Candidates, each a long-lived object given the same entries in interleaved rounds:
- ours_bytes / ours_dict: BackgroundDispatcher (ms_delay 10, no entry bound); the dispatch
  function only counts the batch, like the no-op exporter below: in Python the consumer's
  work holds the GIL the producer needs, and that is the dispatch function's cost, not the
  hand-over's;
- otel: opentelemetry-sdk's BatchLogRecordProcessor (10 ms schedule, a queue large enough never
  to drop) with a no-op exporter, fed one pre-built record: its `on_emit`;
- queue_queue: a queue.Queue drained by a batcher thread (the pattern of several analytics
  SDKs): `put_nowait`;
- deque_append: the floor, `collections.deque.append`.

Prints one JSON line per (candidate, threads): median ns per call (per thread) over the rounds,
aggregate calls/s, and the median of per-round ratios ours_bytes / candidate.

usage: python bench_enqueue.py [--threads 1,4] [--rounds 7] [--quick]
"""

from __future__ import annotations

import argparse
import collections
import json
import queue
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

from background_dispatcher import BackgroundDispatcher

ENTRY_BYTES = b"x" * 100
ENTRY_DICT = {"method": "GET", "path": "/api/items/42", "status": 200, "ms": 3.2}


class Candidate:
    def __init__(
        self,
        name: str,
        enqueue: Callable[[Any], Any],
        entry: Any,
        calls: int,
        settle: Callable[[], None],
        close: Callable[[], None],
    ) -> None:
        self.name, self.enqueue, self.entry, self.calls, self.settle, self.close = (
            name,
            enqueue,
            entry,
            calls,
            settle,
            close,
        )


def ours(name: str, entry: Any, send: Callable[[list[Any]], Any], calls: int) -> Candidate:
    d = BackgroundDispatcher(send, ms_delay=10, max_queue_entries=None)
    return Candidate(name, d.enqueue, entry, calls, lambda: d.flush(), lambda: d.close())


def otel(calls: int) -> Candidate:
    from opentelemetry._logs import LogRecord
    from opentelemetry.sdk._logs import ReadWriteLogRecord
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, LogRecordExporter, LogRecordExportResult

    class NoOpExporter(LogRecordExporter):
        def export(self, batch: Any) -> LogRecordExportResult:
            return LogRecordExportResult.SUCCESS

        def shutdown(self) -> None:
            pass

        def force_flush(self, timeout_millis: int = 30_000) -> bool:
            return True

    processor = BatchLogRecordProcessor(NoOpExporter(), schedule_delay_millis=10, max_queue_size=10_000_000)
    record = ReadWriteLogRecord(LogRecord(body=ENTRY_BYTES.decode()))
    return Candidate("otel", processor.on_emit, record, calls, lambda: processor.force_flush(), processor.shutdown)


def queue_batcher(calls: int) -> Candidate:
    q: queue.Queue[Any] = queue.Queue()
    stop = threading.Event()

    def consume() -> None:
        # Segment-style: block for the first item, then take what is there up to a batch.
        while not stop.is_set():
            try:
                batch = [q.get(timeout=0.01)]
            except queue.Empty:
                continue
            while len(batch) < 100:
                try:
                    batch.append(q.get_nowait())
                except queue.Empty:
                    break
            b"".join(batch)

    worker = threading.Thread(target=consume, daemon=True)
    worker.start()

    def settle() -> None:
        while not q.empty():
            time.sleep(0.001)

    def close() -> None:
        stop.set()
        worker.join()

    return Candidate("queue_queue", q.put_nowait, ENTRY_BYTES, calls, settle, close)


def deque_floor(calls: int) -> Candidate:
    d: collections.deque[Any] = collections.deque()
    return Candidate("deque_append", d.append, ENTRY_BYTES, calls, d.clear, d.clear)


def run_round(c: Candidate, threads: int) -> float:
    """Seconds for `threads` threads to make `c.calls / threads` calls each."""
    per_thread = c.calls // threads
    enqueue, entry = c.enqueue, c.entry
    start = threading.Barrier(threads + 1)
    done = threading.Barrier(threads + 1)

    def work() -> None:
        start.wait()
        for _ in range(per_thread):
            enqueue(entry)
        done.wait()

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for w in workers:
        w.start()
    start.wait()
    t0 = time.perf_counter()
    done.wait()
    elapsed = time.perf_counter() - t0
    for w in workers:
        w.join()
    c.settle()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", default="1,4")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    scale = 5 if args.quick else 1
    for threads in [int(t) for t in args.threads.split(",")]:
        candidates = [
            ours("ours_bytes", ENTRY_BYTES, len, 400_000 // scale),
            ours("ours_dict", ENTRY_DICT, len, 400_000 // scale),
            otel(100_000 // scale),
            queue_batcher(20_000 // scale),
            deque_floor(400_000 // scale),
        ]
        times: dict[str, list[float]] = {c.name: [] for c in candidates}
        for r in range(args.rounds + 1):  # round 0 warms up
            for k in range(len(candidates)):
                c = candidates[(k + r) % len(candidates)]
                elapsed = run_round(c, threads)
                if r > 0:
                    times[c.name].append(elapsed / (c.calls // threads) * 1e9)
        for c in candidates:
            ns = times[c.name]
            ratio = statistics.median(a / b for a, b in zip(times["ours_bytes"], ns, strict=True))
            print(
                json.dumps(
                    {
                        "bench": "python_enqueue",
                        "sink": c.name,
                        "threads": threads,
                        "rounds": args.rounds,
                        "ns_per_call": round(statistics.median(ns), 1),
                        "calls_per_s": round(threads / statistics.median(ns) * 1e9),
                        "ours_bytes_over_this": round(ratio, 4),
                    }
                ),
                flush=True,
            )
            c.close()


if __name__ == "__main__":
    main()
