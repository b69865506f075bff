"""The gateway demo (examples/python/gateway_demo.py, what `make demo` runs) does its job.

Each test runs the demo as a subprocess for about a second and reads its summary: the
collector's own count of the NDJSON lines it received must equal the entries the dispatcher
accepted, and the exit status must say so. A collector that refuses the batches must make the
demo fail: the check can fail.
"""

from __future__ import annotations

import importlib.util
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parents[2] / "examples" / "python" / "gateway_demo.py"
TIMEOUT = 90.0  # seconds for a one-second demo on a busy shared machine


def run_demo(*args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, str(DEMO), *args], capture_output=True, text=True, timeout=TIMEOUT)
    print(f"$ gateway_demo.py {' '.join(args)}  -> exit {proc.returncode}\n{proc.stdout}{proc.stderr}")
    return proc


def summary(stdout: str) -> dict[str, int]:
    """The first number of each summary row, by label: {"entries enqueued": 2004, ...}."""
    rows = (re.match(r"^([a-z ]+?) {2,}(\d+)", line) for line in stdout.splitlines())
    return {m[1]: int(m[2]) for m in rows if m}


def test_demo_delivers_every_entry() -> None:
    proc = run_demo("--duration", "1", "--threads", "4")
    s = summary(proc.stdout)
    assert proc.returncode == 0
    assert s["entries enqueued"] > 0
    assert s["collector received"] == s["entries enqueued"] == s["requests served"]
    assert s["dropped"] == 0
    assert "OK: the collector received every entry" in proc.stdout


def test_demo_with_batch_limit_and_short_window() -> None:
    proc = run_demo("--duration", "1", "--threads", "3", "--ms-delay", "20", "--max-batch-entries", "7")
    s = summary(proc.stdout)
    assert proc.returncode == 0
    batch_max = int(re.search(r"^batch size .* max (\d+)", proc.stdout, re.M)[1])  # type: ignore[index]
    assert batch_max <= 7
    assert s["batches sent"] >= s["entries enqueued"] / 7
    assert s["collector received"] == s["entries enqueued"] > 0


def test_demo_fails_when_the_collector_is_down() -> None:
    # A bound socket that does not listen: every connection is refused, with no race.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        proc = run_demo("--duration", "0.5", "--collector", f"http://127.0.0.1:{closed.getsockname()[1]}/logs")
    s = summary(proc.stdout)
    assert proc.returncode == 1
    assert s["dropped"] == s["entries enqueued"] > 0
    assert "entries failed: <urlopen error" in proc.stderr


def test_serve_runs_a_gateway_against_the_shared_collector() -> None:
    # --serve -- COMMAND: the way `make demo-c` runs the C demo; here the command is the
    # Python demo itself, which then counts through the collector's GET /stats.
    proc = run_demo("--serve", "--", sys.executable, str(DEMO), "--duration", "1")
    s = summary(proc.stdout)
    served = re.search(r"^collector received (\d+) entries in (\d+) batches$", proc.stdout, re.M)
    assert proc.returncode == 0
    assert served is not None
    assert int(served[1]) == s["collector received"] == s["entries enqueued"] > 0


def test_help() -> None:
    proc = run_demo("--help")
    assert proc.returncode == 0
    for option in ("--duration", "--threads", "--rate", "--ms-delay", "--collector", "--serve"):
        assert option in proc.stdout


@pytest.mark.parametrize(
    "args", [("--duration", "nan"), ("--duration", "-1"), ("--threads", "0"), ("--rate", "inf"), ("--ms-delay", "0")]
)
def test_bad_arguments_are_refused(args: tuple[str, str]) -> None:
    proc = run_demo(*args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "error:" in proc.stderr


def test_collector_counts_only_valid_ndjson() -> None:
    # The collector is the demo's oracle: it must count lines exactly and refuse a body with
    # a line that is not JSON (the whole batch, so that batch fails in the gateway).
    spec = importlib.util.spec_from_file_location("gateway_demo", DEMO)
    assert spec is not None and spec.loader is not None
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    collector = demo.Collector()
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    try:

        def post(body: bytes, url: str = collector.url) -> int:
            request = urllib.request.Request(url, data=body, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
                    return int(response.status)
            except urllib.error.HTTPError as error:
                return error.code

        statuses = [
            post(b'{"a": 1}\n{"b": 2}\n\n{"c": 3}\n'),  # 3 entries; the blank line is not one
            post(b'{"a": 1}\nnot json\n'),
            post(b'{"a": 1}\n', url=collector.url.replace("/logs", "/other")),
            post(b"[4]"),  # a last line without its newline still counts
        ]
        counts = demo.collector_counts(collector.url)
        print(f"statuses {statuses}, counts {counts}")
        assert statuses == [204, 400, 404, 204]
        assert counts == {"entries": 4, "batches": 2}
    finally:
        collector.shutdown()
        collector.server_close()


def test_two_gateways_share_a_standalone_collector() -> None:
    # `--serve` alone runs until SIGTERM (or Ctrl-C); each gateway counts only its own entries
    # through the collector's GET /stats (before and after), and the collector's total is the sum.
    server = subprocess.Popen([sys.executable, str(DEMO), "--serve"], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        ready, _, _ = select.select([server.stdout], [], [], TIMEOUT)
        assert ready, "the collector did not say where it listens"
        url = server.stdout.readline().split()[-1]
        enqueued = []
        for threads in ("2", "3"):
            proc = run_demo("--duration", "0.5", "--threads", threads, "--collector", url)
            s = summary(proc.stdout)
            assert proc.returncode == 0
            assert s["collector received"] == s["entries enqueued"] > 0
            enqueued.append(s["entries enqueued"])
        server.send_signal(signal.SIGTERM)
        rest, _ = server.communicate(timeout=TIMEOUT)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(timeout=TIMEOUT)
    print(f"gateways enqueued {enqueued}; the collector said: {rest.strip()}")
    assert server.returncode == 0
    assert f"collector received {sum(enqueued)} entries" in rest
