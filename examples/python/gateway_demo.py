#!/usr/bin/env python3
"""gateway_demo: an API gateway shipping its request logs to a log service.

This is the job background-dispatcher exists for, and the example of Zuplo's
``BackgroundDispatcher`` it re-creates: a request handler must not wait for the log service, so
it enqueues its log entry (for well under a microsecond) and returns; the dispatcher's thread
POSTs the entries in batches, at most one batch every ``ms_delay`` milliseconds.

The script runs both sides on loopback:

- a **log collector** (``http.server`` on an ephemeral port) that accepts ``POST /logs`` with
  an NDJSON body, checks that every line is JSON, and counts entries and batches
  (``GET /stats`` returns the counts);
- a **gateway**: ``--threads`` workers serving fake requests for ``--duration`` seconds, each
  request enqueuing one log entry (a dict) into one shared ``BackgroundDispatcher`` whose
  dispatch function serialises the batch and POSTs it to the collector with ``urllib``.

It shows a live progress line, then a summary. The collector's own count must equal the
entries the dispatcher accepted, or the exit status is 1: nothing was lost on the way.

    python examples/python/gateway_demo.py                 # 5 s, 4 threads, ms_delay 100
    python examples/python/gateway_demo.py --serve         # only the collector, until Ctrl-C
    python examples/python/gateway_demo.py --serve -- build/gateway_demo   # the C demo
    python examples/python/gateway_demo.py --collector http://127.0.0.1:8080/logs

Only the standard library is used besides ``background_dispatcher``.
"""

from __future__ import annotations

import argparse
import array
import json
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from background_dispatcher import BackgroundDispatcher, DispatcherStats

METHODS = ["GET"] * 6 + ["POST"] * 2 + ["PUT", "DELETE"]
PATHS = ["/v1/orders", "/v1/orders/{id}", "/v1/users/{id}", "/v1/search", "/health", "/login"]
STATUSES = [200] * 12 + [201, 204, 304, 400, 401, 404, 429, 500]
HTTP_TIMEOUT = 5.0  # seconds a POST to the collector may take before its batch fails


# --------------------------------------------------------------------------------------------
# The log service


class Collector(ThreadingHTTPServer):
    """A log collector: ``POST /logs`` takes NDJSON, ``GET /stats`` returns the counts."""

    daemon_threads = True

    def __init__(self, port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), CollectorHandler)
        self.lock = threading.Lock()
        self.entries = 0
        self.batches = 0
        self.url = f"http://127.0.0.1:{self.server_address[1]}/logs"

    def counts(self) -> dict[str, int]:
        with self.lock:
            return {"entries": self.entries, "batches": self.batches}


class CollectorHandler(BaseHTTPRequestHandler):
    server: Collector

    def do_POST(self) -> None:
        if self.path != "/logs":
            return self.send_error(404)
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        try:
            entries = [json.loads(line) for line in body.splitlines() if line.strip()]
        except ValueError:
            return self.send_error(400, "every line must be a JSON document")
        with self.server.lock:
            self.server.entries += len(entries)
            self.server.batches += 1
        self.send_response(204)
        self.end_headers()

    def do_GET(self) -> None:
        if self.path != "/stats":
            return self.send_error(404)
        body = json.dumps(self.server.counts()).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per request would drown the demo's own output


def collector_counts(url: str) -> dict[str, int] | None:
    """The counts of the collector behind ``url`` (``GET /stats`` beside it), if it has them."""
    stats_url = url.rsplit("/", 1)[0] + "/stats"
    try:
        with urllib.request.urlopen(stats_url, timeout=HTTP_TIMEOUT) as response:
            counts: dict[str, int] = json.load(response)
            return counts
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------------------------
# The gateway


class Shipper:
    """The dispatch function: POSTs each batch as NDJSON, like the seed's ``fetch``."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.sizes: list[int] = []
        self.starts: list[float] = []  # time.monotonic() at each call; one call at a time

    def __call__(self, entries: list[dict[str, Any]]) -> None:
        self.starts.append(time.monotonic())
        self.sizes.append(len(entries))
        # Serialising here, on the dispatcher's thread, keeps json.dumps off the request path.
        body = "".join(json.dumps(entry) + "\n" for entry in entries).encode()
        request = urllib.request.Request(
            self.url, data=body, method="POST", headers={"Content-Type": "application/x-ndjson"}
        )
        # A non-2xx answer raises HTTPError, which fails the batch (counted in stats.failed).
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
            response.read()

    def on_error(self, exc: BaseException, entries: list[dict[str, Any]]) -> None:
        # One line per failed attempt, not a traceback, when the collector is down.
        newline = "\n" if sys.stdout.isatty() else ""  # leave the progress line alone
        print(f"{newline}batch of {len(entries)} entries failed: {exc}", file=sys.stderr, flush=True)


class Worker(threading.Thread):
    """One gateway worker: serves fake requests, paced to ``rate`` per second (0: no pacing)."""

    def __init__(self, index: int, dispatcher: BackgroundDispatcher[dict[str, Any]], rate: float, until: float) -> None:
        super().__init__(name=f"worker-{index}")
        self.index, self.dispatcher, self.rate, self.until = index, dispatcher, rate, until
        self.served = 0
        self.enqueue_ns = array.array("q")  # the cost of each enqueue call, 8 bytes each

    def run(self) -> None:
        rng = random.Random(self.index)
        next_at = time.monotonic()
        while (now := time.monotonic()) < self.until:
            if self.rate:  # deadline pacing: a late request does not shift the ones after it
                if now < next_at:
                    time.sleep(next_at - now)
                next_at += 1.0 / self.rate
            entry = {
                "ts": time.time(),
                "request_id": uuid.uuid4().hex,
                "worker": self.index,
                "method": rng.choice(METHODS),
                "path": rng.choice(PATHS).format(id=rng.randrange(10_000)),
                "status": rng.choice(STATUSES),
                "latency_ms": round(rng.lognormvariate(3.0, 0.8), 2),
            }
            # The request handler's whole logging cost; the entry must not change afterwards.
            start = time.perf_counter_ns()
            self.dispatcher.enqueue(entry)
            self.enqueue_ns.append(time.perf_counter_ns() - start)
            self.served += 1


def run_gateway(args: argparse.Namespace) -> int:
    collector = None
    url = args.collector
    if url is None:
        collector = Collector()
        threading.Thread(target=collector.serve_forever, name="collector", daemon=True).start()
        url = collector.url
    before = collector_counts(url)  # a shared collector counts other gateways' entries too

    shipper = Shipper(url)
    dispatcher: BackgroundDispatcher[dict[str, Any]] = BackgroundDispatcher(
        shipper,
        ms_delay=args.ms_delay,
        max_queue_entries=args.max_queue_entries,
        max_batch_entries=args.max_batch_entries,
        max_attempts=args.max_attempts,  # 1, like the seed: no retries unless asked for
        on_error=shipper.on_error,
    )
    pace = f"{args.rate:g} requests/s in total" if args.rate else "unpaced"
    print(
        f"gateway: {args.threads} threads for {args.duration:g} s, {pace}, ms_delay {args.ms_delay:g}; collector {url}"
    )
    started = time.monotonic()
    until = started + args.duration
    workers = [Worker(i, dispatcher, args.rate / args.threads, until) for i in range(args.threads)]
    for worker in workers:
        worker.start()

    tty = sys.stdout.isatty()  # redraw one line on a terminal; a line per second in a log
    while any(worker.is_alive() for worker in workers):
        time.sleep(min(0.1 if tty else 1.0, max(0.01, until - time.monotonic())))
        s = dispatcher.stats
        line = (
            f"[{time.monotonic() - started:4.1f} s] requests {sum(w.served for w in workers):>8}  "
            f"enqueued {s.enqueued:>8}  batches {s.batches:>5}  queue depth {s.queued_entries + s.in_flight_entries:>6}"
        )
        print(f"\r{line}" if tty else line, end="" if tty else "\n", flush=True)
    for worker in workers:
        worker.join()
    closing = time.monotonic()
    delivered = dispatcher.close(timeout=10.0)  # ships what is still queued, at most 10 s
    after = collector_counts(url)
    if collector is not None:
        collector.shutdown()
        collector.server_close()
    print("\n" if tty else "")
    received = after["entries"] - before["entries"] if after and before else None
    return report(args, dispatcher.stats, shipper, workers, closing, delivered, received)


def report(
    args: argparse.Namespace,
    s: DispatcherStats,
    shipper: Shipper,
    workers: list[Worker],
    closing: float,
    delivered: bool,
    received: int | None,
) -> int:
    """Prints the summary; 0 if the collector counted exactly the entries the gateway enqueued."""

    def row(label: str, value: object) -> None:
        print(f"{label:<20} {value}")

    costs = sorted(ns for worker in workers for ns in worker.enqueue_ns)
    # Window to window: only batches started while traffic flowed (the close does not wait).
    gaps = [(b - a) * 1000 for a, b in zip(shipper.starts, shipper.starts[1:], strict=False) if b < closing]
    dropped = s.rejected + s.failed + s.evicted + s.abandoned
    row("requests served", sum(w.served for w in workers))
    row("entries enqueued", f"{s.enqueued} (accepted; {s.rejected} rejected)")
    row("batches sent", f"{s.batches} ({s.dispatched} entries dispatched, {s.failed} failed)")
    if shipper.sizes:
        row("batch size", f"mean {sum(shipper.sizes) / len(shipper.sizes):.1f}, max {max(shipper.sizes)}")
    if gaps:
        # Full batches go without waiting for their window; without a batch limit, a gap below
        # ms_delay is a measurement artefact: a start that waited for the GIL makes the next
        # gap look short.
        why = ""
        if min(gaps) < args.ms_delay:
            if args.max_batch_entries:
                why = "; full batches do not wait for their window"
            else:
                why = "; a batch that waited for the GIL started late"

        row(
            "dispatch interval",
            f"mean {sum(gaps) / len(gaps):.1f} ms, min {min(gaps):.1f} ms (ms_delay {args.ms_delay:g}{why})",
        )
    if costs:
        p50, p99 = costs[len(costs) // 2], costs[len(costs) * 99 // 100]
        row("enqueue cost", f"p50 {p50 / 1000:.2f} us, p99 {p99 / 1000:.2f} us (with the clock reads)")
    row(
        "dropped", f"{dropped} (rejected {s.rejected}, failed {s.failed}, evicted {s.evicted}, abandoned {s.abandoned})"
    )
    if received is None:
        row("collector received", "unknown (no GET /stats beside the collector's URL)")
        return 0 if delivered and dropped == 0 else 1
    row("collector received", f"{received} entries")
    if received == s.enqueued == s.dispatched and delivered:
        print("OK: the collector received every entry the gateway enqueued")
        return 0
    print(
        f"FAILED: the collector received {received} entries, the gateway enqueued {s.enqueued}, "
        f"of which {s.dispatched} were dispatched successfully"
    )
    return 1


# --------------------------------------------------------------------------------------------
# The collector alone


def serve(args: argparse.Namespace, command: list[str]) -> int:
    """Runs only the collector: until Ctrl-C, or while ``command --collector URL`` runs."""
    collector = Collector(args.port)
    threading.Thread(target=collector.serve_forever, name="collector", daemon=True).start()
    print(f"collector listening on {collector.url}", flush=True)
    status = 0
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # `kill` stops it like Ctrl-C
    try:
        if command:
            status = subprocess.run([*command, "--collector", collector.url], timeout=args.timeout).returncode
        else:
            threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        collector.shutdown()
        counts = collector.counts()
        print(f"collector received {counts['entries']} entries in {counts['batches']} batches")
    return status


def main(argv: list[str]) -> int:
    # Everything after "--" is the command that --serve runs (argparse would take its options).
    command = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(
        description="An API gateway shipping request logs, in batches, to a log collector on loopback.",
        epilog="With --serve, a COMMAND after -- is run as COMMAND --collector URL; its exit status is ours.",
    )
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of traffic (default 5)")
    parser.add_argument("--threads", type=int, default=4, help="gateway worker threads (default 4)")
    parser.add_argument(
        "--rate",
        type=float,
        default=2000.0,
        help="requests per second, in total over all threads; 0 = as fast as possible (default 2000)",
    )
    parser.add_argument("--ms-delay", type=float, default=100.0, help="the dispatcher's ms_delay (default 100)")
    parser.add_argument("--max-batch-entries", type=int, default=None, help="batch size limit (default none)")
    parser.add_argument("--max-queue-entries", type=int, default=100_000, help="queue bound (default 100000)")
    parser.add_argument("--max-attempts", type=int, default=1, help="tries per batch (default 1: no retry)")
    parser.add_argument("--collector", metavar="URL", help="POST to this collector instead of an embedded one")
    parser.add_argument("--serve", action="store_true", help="run only the collector (until Ctrl-C, or COMMAND)")
    parser.add_argument("--port", type=int, default=0, help="the collector's port with --serve (default: any free)")
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="seconds COMMAND may run with --serve (default 120)"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.threads <= 1024:
        parser.error("--threads must be from 1 to 1024")
    if not (0 <= args.duration <= 86_400 and 0 <= args.rate <= 1e9 and 0 < args.ms_delay <= 3_600_000):
        parser.error("--duration must be 0 to 86400 s, --rate 0 to 1e9, --ms-delay above 0 (and finite)")
    return serve(args, command) if args.serve else run_gateway(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
