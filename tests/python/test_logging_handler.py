"""``background_dispatcher.logging.DispatchingHandler``: records shipped in batches.

Each test prints its figures (records, batches, drops, time); ``pytest -s`` shows them. Waits
poll a condition up to a generous deadline; code that could deadlock runs in a thread joined
with a timeout, so a regression fails instead of hanging.
"""

from __future__ import annotations

import asyncio
import logging
import logging.config
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from background_dispatcher.logging import DispatchingHandler
from conftest import CRASH_MARKERS, PATIENCE, Gate, Recorder, run_python, wait_until


class ListHandler(logging.Handler):
    """Keeps what it is given (the fallback in these tests)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    """A logger of its own (not propagating to root, where pytest has its handlers)."""
    log = logging.getLogger(f"test_logging_handler.{uuid.uuid4().hex}")
    log.setLevel(logging.DEBUG)
    log.propagate = False
    yield log
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()


def run_with_deadline(fn: Callable[[], object], what: str, timeout: float = PATIENCE) -> float:
    """Runs ``fn`` in a thread; fails (instead of hanging) if it has not returned in time.
    Returns the seconds it took."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised on the test's thread
            errors.append(exc)

    start = time.monotonic()
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    took = time.monotonic() - start
    assert not thread.is_alive(), f"{what}: still running after {timeout} s (deadlock?)"
    if errors:
        raise errors[0]
    return took


def test_records_are_formatted_and_delivered_in_order(logger: logging.Logger) -> None:
    recorder = Recorder()
    handler = DispatchingHandler(recorder, ms_delay=20)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    logger.addHandler(handler)

    for i in range(50):
        logger.info("request %d served", i)
    logger.warning("slow: %s ms", 1234)
    handler.flush()

    expected = [f"INFO {logger.name} request {i} served" for i in range(50)] + [f"WARNING {logger.name} slow: 1234 ms"]
    print(
        f"records 51, delivered {len(recorder.delivered)}, batches {len(recorder.batches)}, dropped {handler.dropped}"
    )
    assert recorder.delivered == expected
    assert all(type(entry) is str for entry in recorder.delivered)
    assert handler.dropped == 0 and handler.diverted == 0


def test_batching_hands_many_records_to_one_call(logger: logging.Logger) -> None:
    # A window far longer than the test: only the size trigger can dispatch, so the split is exact.
    recorder = Recorder()
    handler = DispatchingHandler(recorder, ms_delay=600_000, max_batch_entries=25)
    logger.addHandler(handler)

    for i in range(200):
        logger.info("entry %d", i)
    wait_until(lambda: len(recorder.delivered) == 200, "200 records in full batches")

    sizes = [len(batch) for batch in recorder.batches]
    print(f"records 200, dispatch calls {len(sizes)}, batch sizes {sizes}")
    assert sizes == [25] * 8
    assert recorder.delivered == [f"entry {i}" for i in range(200)]


def test_flush_delivers_what_is_queued_without_waiting_for_the_window(logger: logging.Logger) -> None:
    recorder = Recorder()
    handler = DispatchingHandler(recorder, ms_delay=600_000)
    logger.addHandler(handler)

    for i in range(5):
        logger.error("e%d", i)
    assert recorder.delivered == []  # the window (10 minutes) has not ended
    start = time.monotonic()
    handler.flush()
    took = time.monotonic() - start
    print(f"records 5, delivered after flush {len(recorder.delivered)} in {took * 1000:.1f} ms")
    assert recorder.delivered == [f"e{i}" for i in range(5)]


def test_flush_waits_at_most_flush_timeout_when_the_collector_hangs(logger: logging.Logger) -> None:
    gate = Gate()
    handler = DispatchingHandler(gate, ms_delay=1, flush_timeout=0.2)
    logger.addHandler(handler)
    try:
        logger.info("stuck")
        wait_until(gate.waiting.is_set, "the dispatch function to start")
        logger.info("queued behind it")
        took = run_with_deadline(handler.flush, "flush with a hung collector")
        print(f"flush_timeout 0.2 s, flush returned after {took:.3f} s")
        assert took >= 0.2
    finally:
        gate.open()


def test_close_delivers_is_idempotent_and_later_records_count_as_dropped(logger: logging.Logger) -> None:
    recorder = Recorder()
    handler = DispatchingHandler(recorder, ms_delay=600_000)
    logger.addHandler(handler)
    for i in range(10):
        logger.info("r%d", i)

    handler.close()
    assert recorder.delivered == [f"r{i}" for i in range(10)]
    handler.close()  # idempotent: no error, nothing more delivered
    logger.info("after close")  # refused: counted, never raised
    logger.info("after close, again")
    handler.flush()  # harmless on a closed handler
    print(f"records 12, delivered {len(recorder.delivered)}, dropped after close {handler.dropped}")
    assert len(recorder.delivered) == 10
    assert handler.dropped == 2 and handler.stats.rejected == 2


def test_close_returns_at_close_timeout_and_delivers_the_rest_in_the_background(logger: logging.Logger) -> None:
    # A close that reaches its deadline (a hung collector, or dictConfig holding logging's
    # lock) must not drop what is queued: the records go out once the dispatch is free.
    gate = Gate()
    delivered: list[str] = []
    drops: list[tuple[list[str], str]] = []

    def ship(entries: list[str]) -> None:
        gate(entries)
        delivered.extend(entries)

    handler = DispatchingHandler(
        ship, ms_delay=1, close_timeout=0.2, on_drop=lambda entries, reason: drops.append((entries, reason))
    )
    logger.addHandler(handler)
    logger.info("in flight")
    wait_until(gate.waiting.is_set, "the dispatch function to start")
    for i in range(3):
        logger.info("queued %d", i)
    took = run_with_deadline(handler.close, "close with a hung collector")
    assert 0.2 <= took < PATIENCE, took
    logger.info("after close")  # refused: the handler is closed
    gate.open()
    wait_until(lambda: len(delivered) == 4, "the queued records to be delivered after close")
    print(f"close_timeout 0.2 s, close returned after {took:.3f} s; then delivered {delivered}, on_drop {drops}")
    assert delivered == ["in flight", "queued 0", "queued 1", "queued 2"]
    assert drops == []
    assert handler.dropped == 1  # "after close", refused
    assert handler.diverted == 1  # ... and handed to the fallback, not lost unseen
    logger.removeHandler(handler)


def test_two_handlers_whose_dispatch_functions_log_do_not_feed_each_other(logger: logging.Logger) -> None:
    # Each handler's dispatch function logs (an HTTP client's chatter, say) to a logger that
    # both handlers serve: without a guard across handlers, one record would bounce between
    # them, a batch per window, forever.
    calls = {"a": 0, "b": 0}

    def shipper(name: str) -> Callable[[list[str]], None]:
        def ship(entries: list[str]) -> None:
            calls[name] += 1
            logger.info("%s shipped %d records", name, len(entries))

        return ship

    quiet = logging.NullHandler()
    a = DispatchingHandler(shipper("a"), ms_delay=1, fallback=quiet)
    b = DispatchingHandler(shipper("b"), ms_delay=1, fallback=quiet)
    logger.addHandler(a)
    logger.addHandler(b)
    try:
        logger.info("one record")
        a.flush()
        b.flush()
        assert a.stats.dispatched == 1 and b.stats.dispatched == 1
        # Give a ping-pong every chance to start: more windows pass, no new batch appears.
        deadline = time.monotonic() + 0.2
        while time.monotonic() < deadline:
            a.flush()
            b.flush()
        print(f"calls {calls}, diverted a {a.diverted} b {b.diverted}")
        assert calls == {"a": 1, "b": 1}
        assert a.diverted == 2 and b.diverted == 2  # each saw both shippers' chatter
    finally:
        logger.removeHandler(a)
        logger.removeHandler(b)
        a.close()
        b.close()


def test_overflow_block_is_refused() -> None:
    with pytest.raises(ValueError, match="never block"):
        DispatchingHandler(print, ms_delay=10, overflow="block")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="flush_timeout"):
        DispatchingHandler(print, ms_delay=10, flush_timeout=-1)
    with pytest.raises(TypeError):
        DispatchingHandler("not callable", ms_delay=10)  # type: ignore[arg-type]
    with pytest.raises(ValueError):  # BackgroundDispatcher's own checks apply
        DispatchingHandler(print, ms_delay=0)


@pytest.mark.parametrize("overflow", ["drop_newest", "drop_oldest"])
def test_logging_never_blocks_on_a_hung_collector_with_a_tiny_queue(logger: logging.Logger, overflow: Any) -> None:
    gate = Gate()
    handler = DispatchingHandler(gate, ms_delay=1, max_queue_entries=4, overflow=overflow)
    logger.addHandler(handler)
    try:
        logger.info("first")
        wait_until(gate.waiting.is_set, "the dispatch function to hang")

        def log_many() -> None:
            for i in range(1000):
                logger.info("burst %d", i)

        took = run_with_deadline(log_many, "1000 logging calls into a full queue")
        stats = handler.stats
        print(
            f"{overflow}: 1000 records in {took:.3f} s with the collector hung, queued {stats.queued_entries}, "
            f"dropped {handler.dropped} (rejected {stats.rejected}, evicted {stats.evicted})"
        )
        assert stats.queued_entries == 4
        assert handler.dropped == 996
    finally:
        gate.open()
    handler.close()
    assert handler.stats.dispatched == 5  # the one in flight and the four that fit


def test_recursion_dispatch_function_logging_to_root_through_this_handler() -> None:
    """The dispatch function logs (info, warning, an exception) to the root logger, which has
    this very handler: those records go to the fallback, never back into the queue."""
    recorder = Recorder()
    fallback = ListHandler()

    def ship(entries: list[str]) -> None:
        recorder(entries)
        logging.getLogger().info("shipped %d records", len(entries))
        logging.getLogger("collector.client").warning("collector slow")
        try:
            raise ConnectionError("reset")
        except ConnectionError:
            logging.getLogger("collector.client").exception("retrying")

    handler = DispatchingHandler(ship, ms_delay=5, fallback=fallback)
    root = logging.getLogger()
    old_level = root.level
    root.setLevel(logging.INFO)
    root.addHandler(handler)
    try:

        def log_and_flush() -> None:
            for i in range(100):
                logging.getLogger("app").info("app record %d", i)
            handler.flush()

        took = run_with_deadline(log_and_flush, "logging with a dispatch function that logs")
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        handler.close()

    batches = len(recorder.batches)
    print(
        f"app records 100, delivered {len(recorder.delivered)} in {batches} batches, "
        f"diverted {handler.diverted} to the fallback, {took:.3f} s"
    )
    assert recorder.delivered == [f"app record {i}" for i in range(100)]  # no shipper chatter
    assert handler.diverted == 3 * batches
    assert [r.getMessage() for r in fallback.records][:3] == [
        f"shipped {len(recorder.batches[0])} records",
        "collector slow",
        "retrying",
    ]


def test_no_deadlock_when_a_thread_holding_the_handler_lock_flushes_and_closes(logger: logging.Logger) -> None:
    """``logging.shutdown`` flushes and closes each handler holding its lock; meanwhile the
    dispatch function logs into the same handler. Timeouts longer than the deadline prove that
    nothing waited for a lock: a deadlock would fail the deadline, not time out quietly."""
    recorder = Recorder()

    def ship(entries: list[str]) -> None:
        recorder(entries)
        logger.warning("shipped %d", len(entries))

    handler = DispatchingHandler(
        ship, ms_delay=600_000, flush_timeout=PATIENCE * 3, close_timeout=PATIENCE * 3, fallback=logging.NullHandler()
    )
    logger.addHandler(handler)
    for i in range(20):
        logger.info("r%d", i)

    def shutdown_like_logging() -> None:
        handler.acquire()
        try:
            handler.flush()
            handler.close()
        finally:
            handler.release()

    took = run_with_deadline(shutdown_like_logging, "flush/close under the handler lock")
    print(f"records 20, delivered {len(recorder.delivered)}, diverted {handler.diverted}, {took:.3f} s")
    assert recorder.delivered == [f"r{i}" for i in range(20)]
    assert handler.diverted == len(recorder.batches) >= 1


def test_flush_and_close_are_bounded_while_logging_module_lock_is_held(logger: logging.Logger) -> None:
    """``logging.config.dictConfig`` shuts the old handlers down holding logging's module lock,
    which ``logging.getLogger`` needs too: a dispatch function that calls it waits for that
    lock, so flush and close can only end by their timeouts. They must, and nothing is lost."""
    recorder = Recorder()

    def ship(entries: list[str]) -> None:
        logging.getLogger(f"collector.{uuid.uuid4().hex}")  # takes the module lock
        recorder(entries)

    handler = DispatchingHandler(ship, ms_delay=600_000, flush_timeout=0.3, close_timeout=0.3)
    logger.addHandler(handler)
    for i in range(10):
        logger.info("r%d", i)
    module_lock = vars(logging)["_lock"]

    def shut_down_like_dict_config() -> None:
        with module_lock:
            handler.flush()
            handler.close()

    took = run_with_deadline(shut_down_like_dict_config, "flush/close under logging's module lock")
    wait_until(lambda: len(recorder.delivered) == 10, "the batch to finish once the lock is free")
    print(f"flush+close under the module lock returned after {took:.3f} s; delivered 10, dropped {handler.dropped}")
    assert recorder.delivered == [f"r{i}" for i in range(10)]
    assert handler.dropped == 0


def test_records_logged_before_exit_are_delivered_without_an_explicit_close() -> None:
    """At interpreter exit the package's hook and ``logging.shutdown`` close the handler; the
    dispatch function logs to root (this handler) meanwhile: delivered, no hang, exit code kept."""
    result = run_python(
        """
        import logging, sys
        from background_dispatcher.logging import DispatchingHandler

        def ship(entries):
            for entry in entries:
                print(entry, flush=True)
            logging.getLogger("shipper").warning("shipped %d", len(entries))

        logging.basicConfig(level=logging.INFO, handlers=[DispatchingHandler(ship, ms_delay=600_000)])
        for i in range(100):
            logging.info("record %d", i)
        sys.exit(3)
        """
    )
    lines = result.stdout.splitlines()
    print(f"exit code {result.returncode}, delivered {len(lines)} of 100, stderr {result.stderr!r}")
    assert result.returncode == 3
    assert lines == [f"INFO:root:record {i}" for i in range(100)]
    assert result.stderr.splitlines()[0] == "shipped 100"  # the fallback: logging.lastResort
    assert not any(marker in result.stderr for marker in CRASH_MARKERS)


def test_flush_and_close_inside_the_dispatch_function_do_not_wait_for_themselves(logger: logging.Logger) -> None:
    calls: list[str] = []
    handler: DispatchingHandler

    def ship(entries: list[str]) -> None:
        calls.extend(entries)
        handler.flush()  # e.g. a library calling logging.shutdown() from the shipper
        handler.close()

    handler = DispatchingHandler(ship, ms_delay=1, close_timeout=PATIENCE * 3)
    logger.addHandler(handler)
    logger.info("one")
    wait_until(lambda: handler.stats.dispatched == 1, "the batch that closes its own handler")
    took = run_with_deadline(handler.close, "close after a close from inside")
    # The inner close finishes on a helper thread once that batch is over: probes logged
    # until then are delivered, and from then on they are refused.
    probes = 0

    def refused() -> bool:
        nonlocal probes
        probes += 1
        logger.info("probe")
        return handler.stats.rejected > 0

    wait_until(refused, "the handler to refuse records after its close")
    wait_until(lambda: handler.stats.queued_entries + handler.stats.in_flight_entries == 0, "the last delivery")
    print(f"delivered {len(calls)}, probes {probes}, close after inner close {took:.3f} s, dropped {handler.dropped}")
    assert calls[0] == "one" and len(calls) == probes
    assert handler.dropped == 1


def test_exceptions_in_dispatch_never_reach_the_logging_call(logger: logging.Logger) -> None:
    errors: list[tuple[BaseException, list[str]]] = []

    def broken(entries: list[str]) -> None:
        raise RuntimeError("collector down")

    with_hook = DispatchingHandler(broken, ms_delay=1, on_error=lambda exc, entries: errors.append((exc, entries)))
    fallback = ListHandler()
    without_hook = DispatchingHandler(broken, ms_delay=1, fallback=fallback)
    # The library reports a failed batch on the "background_dispatcher" logger, from the
    # dispatcher's thread: make that logger reach this very handler, the worst case.
    lib_logger = logging.getLogger("background_dispatcher")
    lib_logger.addHandler(without_hook)
    logger.addHandler(with_hook)
    logger.addHandler(without_hook)
    try:
        for i in range(10):
            logger.info("r%d", i)  # must not raise
        with_hook.flush()
        without_hook.flush()
        wait_until(lambda: without_hook.stats.failed == 10 and with_hook.stats.failed == 10, "all batches failed")
    finally:
        lib_logger.removeHandler(without_hook)
    failed_reports = [r for r in fallback.records if r.name == "background_dispatcher"]
    print(
        f"records 10; on_error calls {len(errors)}, dropped {with_hook.dropped}; without on_error: "
        f"{len(failed_reports)} failure reports diverted to the fallback, dropped {without_hook.dropped}"
    )
    assert [e for _, entries in errors for e in entries] == [f"r{i}" for i in range(10)]
    assert all(isinstance(exc, RuntimeError) for exc, _ in errors)
    assert with_hook.dropped == 10 and without_hook.dropped == 10
    assert len(failed_reports) == without_hook.stats.batches >= 1
    assert failed_reports[0].exc_info is not None and failed_reports[0].levelno == logging.ERROR
    assert without_hook.diverted == len(failed_reports)


def test_a_record_that_cannot_be_formatted_goes_to_handle_error(logger: logging.Logger) -> None:
    recorder = Recorder()
    seen: list[logging.LogRecord] = []

    class Handler(DispatchingHandler):
        def handleError(self, record: logging.LogRecord) -> None:
            seen.append(record)

    class Broken(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            if record.msg == "unformattable":
                raise ValueError("cannot format")
            return super().format(record)

    handler = Handler(recorder, ms_delay=1)
    handler.setFormatter(Broken())
    logger.addHandler(handler)
    logger.info("unformattable")  # must not raise
    logger.info("fine")
    handler.flush()
    print(f"handleError saw {len(seen)}, delivered {recorder.delivered}")
    assert len(seen) == 1 and recorder.delivered == ["fine"]


def test_many_threads_logging_lose_and_duplicate_nothing(logger: logging.Logger) -> None:
    recorder = Recorder()
    handler = DispatchingHandler(recorder, ms_delay=5, max_queue_entries=None)
    logger.addHandler(handler)
    threads, per_thread = 8, 500
    start = threading.Barrier(threads)

    def produce(t: int) -> None:
        start.wait(PATIENCE)
        for n in range(per_thread):
            logger.info("t%d-%d", t, n)

    workers = [threading.Thread(target=produce, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(PATIENCE)
        assert not w.is_alive(), "a logging thread hung"
    handler.close()

    delivered = recorder.delivered
    expected = {f"t{t}-{n}" for t in range(threads) for n in range(per_thread)}
    print(
        f"threads {threads} x {per_thread} records: delivered {len(delivered)} in {len(recorder.batches)} batches, "
        f"lost {len(expected - set(delivered))}, duplicates {len(delivered) - len(set(delivered))}"
    )
    assert len(delivered) == len(expected) and set(delivered) == expected
    for t in range(threads):  # per-thread order holds
        mine = [int(e.split("-")[1]) for e in delivered if e.startswith(f"t{t}-")]
        assert mine == list(range(per_thread))


def test_async_dispatch_function_that_logs(logger: logging.Logger) -> None:
    recorder = Recorder()

    async def ship(entries: list[str]) -> None:
        await asyncio.sleep(0)
        recorder(entries)
        logger.info("async shipped %d", len(entries))

    handler = DispatchingHandler(ship, ms_delay=5, fallback=logging.NullHandler())
    logger.addHandler(handler)
    for i in range(30):
        logger.info("a%d", i)
    run_with_deadline(handler.close, "closing an async handler")
    print(
        f"records 30, delivered {len(recorder.delivered)} in {len(recorder.batches)} batches, "
        f"diverted {handler.diverted}"
    )
    assert recorder.delivered == [f"a{i}" for i in range(30)]
    assert handler.diverted == len(recorder.batches)


@pytest.mark.parametrize("key", ["()", "class"])
def test_dict_config(key: str) -> None:
    name = f"test_logging_handler.dictconfig.{uuid.uuid4().hex}"
    recorder = Recorder()
    logging.config.dictConfig(
        {
            "version": 1,
            "incremental": False,
            "disable_existing_loggers": False,
            "formatters": {"short": {"format": "%(levelname)s:%(message)s"}},
            "handlers": {
                "collector": {
                    key: "background_dispatcher.logging.DispatchingHandler",
                    "dispatch": recorder,
                    "ms_delay": 50,
                    "max_batch_entries": 10,
                    "level": "INFO",
                    "formatter": "short",
                }
            },
            "loggers": {name: {"handlers": ["collector"], "level": "DEBUG", "propagate": False}},
        }
    )
    log = logging.getLogger(name)
    (handler,) = log.handlers
    try:
        assert isinstance(handler, DispatchingHandler)
        log.debug("below the handler's level")
        log.info("shipped")
        handler.flush()
        print(f"dictConfig with {key!r}: delivered {recorder.delivered}")
        assert recorder.delivered == ["INFO:shipped"]
    finally:
        log.removeHandler(handler)
        handler.close()


def test_the_module_name_does_not_shadow_the_standard_library() -> None:
    import background_dispatcher.logging as ours

    assert vars(ours)["logging"] is logging and ours.__name__ == "background_dispatcher.logging"
    assert ours.DispatchingHandler.__mro__[1] is logging.Handler
