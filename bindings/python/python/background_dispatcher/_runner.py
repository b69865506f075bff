"""The Python side of a dispatcher's callbacks, called by its worker thread with the GIL held.

Kept in Python because none of it is on the hot path (it runs once per batch) and all of it is
about Python: awaiting coroutines on the right event loop, reporting exceptions, logging.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import inspect
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["Runner", "in_batch"]

log = logging.getLogger("background_dispatcher")

# How often a worker waiting for a batch on the app's event loop checks that the loop still runs.
_LOOP_CHECK_SECONDS = 0.25
# How many times a batch whose task the app's loop cancelled before it started is offered to
# that loop again, while it runs, before it goes to the private loop.
_MAX_OFFERS = 3


#: Set while an async dispatch function runs, so that ``aflush``/``aclose`` from inside it
#: refuse (they would wait for the very batch that awaits them).
_IN_BATCH: contextvars.ContextVar[bool] = contextvars.ContextVar("background_dispatcher_in_batch", default=False)


def in_batch() -> bool:
    return _IN_BATCH.get()


class _Handoff:
    """A batch offered to the app's event loop. Whichever side claims it first runs it: the
    loop, when the task starts, or the worker, when the loop stopped (or cancelled the task)
    before that. A batch that never started can then run on the private loop, as the same
    attempt, with no risk of running twice."""

    __slots__ = ("_lock", "_claimed")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._claimed = False

    def claim(self) -> bool:
        with self._lock:
            if self._claimed:
                return False
            self._claimed = True
            return True


class _Escaped(Exception):
    """Carries a ``KeyboardInterrupt`` or ``SystemExit`` raised by an async dispatch function
    out of its task. Raised as they are, asyncio would not keep them in the task: it re-raises
    them out of the event loop, which stops it (the app's own loop, in ``asyncio.run``).

    On the main thread they may not be the dispatch function's at all: Ctrl-C, or a SIGTERM
    handler's ``sys.exit``, lands wherever the main thread is. So there the batch fails, and
    the exception is raised again in the loop, which stops as it would have without us."""

    def __init__(self, exc: BaseException) -> None:
        super().__init__(exc)
        self.exc = exc


async def _await(awaitable: Any, handoff: _Handoff | None = None) -> Any:
    if handoff is not None and not handoff.claim():
        return None  # the worker took the batch back: the loop was stopping
    _IN_BATCH.set(True)  # in this batch's task context only
    try:
        return await awaitable
    except (KeyboardInterrupt, SystemExit) as exc:
        if threading.current_thread() is threading.main_thread():
            asyncio.get_running_loop().call_soon(_reraise, exc)
        raise _Escaped(exc) from None


def _reraise(exc: BaseException) -> None:
    raise exc


def _is_async(fn: Any) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))  # noqa: B004 - an async __call__, not callability


class Runner:
    """Calls the dispatch function and the error/drop hooks of one dispatcher."""

    __slots__ = ("fn", "on_error", "on_drop", "app_loop", "_private_loop", "_lock", "_pid")

    def __init__(
        self,
        fn: Callable[[list[Any]], Any],
        on_error: Callable[[BaseException, list[Any]], Any] | None,
        on_drop: Callable[[list[Any], str], Any] | None,
    ) -> None:
        self.fn = fn
        self.on_error = on_error
        self.on_drop = on_drop
        self.app_loop: asyncio.AbstractEventLoop | None = None
        if _is_async(fn):
            try:
                # Created inside a running loop: async batches run there, next to the app's
                # client sessions. (A sync function is not tied to any loop.)
                self.app_loop = asyncio.get_running_loop()
            except RuntimeError:
                pass
        self._private_loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def _forget_loops_after_fork(self) -> None:
        """In a fork child, the parent's loops (and their selectors) are the parent's: leave
        them unused and unclosed, and run batches on a private loop of the child's own."""
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self.app_loop = None
            self._private_loop = None

    def dispatch(self, entries: list[Any]) -> bool:
        """Delivers one batch; False if the dispatch function raised (already reported)."""
        self._forget_loops_after_fork()
        try:
            result = self.fn(entries)
            if inspect.isawaitable(result):
                self._run(result)
            return True
        except _Escaped as escaped:
            self._report(escaped.exc, entries)
            return False
        except BaseException as exc:  # noqa: BLE001 - the worker must survive anything
            self._report(exc, entries)
            return False

    def drop(self, entries: list[Any], reason: str) -> None:
        if self.on_drop is None:
            return
        try:
            self.on_drop(entries, reason)
        except BaseException:  # noqa: BLE001
            log.exception("on_drop raised (%d entries dropped, reason %r)", len(entries), reason)

    def loop_is_running(self) -> bool:
        self._forget_loops_after_fork()
        return self.app_loop is not None and self.app_loop.is_running()

    def close(self) -> None:
        """Closes the private loop, once the dispatcher has stopped using it."""
        with self._lock:
            loop, self._private_loop = self._private_loop, None
        if loop is not None and not loop.is_running():
            loop.close()

    def __del__(self) -> None:
        # The runner goes when its dispatcher and worker are done with it. A dispatcher let
        # go of without close() never closed the private loop: close it here, or it would be
        # reported unclosed (ResourceWarning) and keep its self-pipe open until collected.
        with contextlib.suppress(BaseException):  # never raise from __del__
            self.close()

    def _run(self, awaitable: Any) -> None:
        app_loop = self.app_loop
        offers = 0
        while app_loop is not None and app_loop.is_running() and offers < _MAX_OFFERS:
            offers += 1
            handoff = _Handoff()
            future = asyncio.run_coroutine_threadsafe(_await(awaitable, handoff), app_loop)
            while True:
                try:
                    future.result(timeout=_LOOP_CHECK_SECONDS)
                    return
                except concurrent.futures.CancelledError:
                    # Something cancelled the task: the loop shutting down (asyncio.run
                    # returning), or the app cancelling every task.
                    if not handoff.claim():
                        raise  # while it ran: this attempt failed
                    break  # before it started: offer it again while the loop runs, else below
                except concurrent.futures.TimeoutError:
                    if app_loop.is_running():
                        continue
                    # Stopped. (A closed loop's future must not be cancelled: that schedules a
                    # callback on the closed loop.)
                    claimed = handoff.claim()
                    if not app_loop.is_closed():
                        future.cancel()  # a task that starts later finds the batch claimed
                    if claimed:
                        break  # it never started: run it below
                    raise RuntimeError("the event loop running this dispatcher's batches stopped") from None
        # No app loop, or it stopped before the batch started: run on the dispatcher's own
        # loop, on this thread.
        with self._lock:
            if self._private_loop is None or self._private_loop.is_closed():
                self._private_loop = asyncio.new_event_loop()
            loop = self._private_loop
        loop.run_until_complete(_await(awaitable))

    def _report(self, exc: BaseException, entries: list[Any]) -> None:
        if self.on_error is None:
            log.error("dispatch function raised; %d entries not delivered", len(entries), exc_info=exc)
            return
        try:
            self.on_error(exc, entries)
        except BaseException:  # noqa: BLE001
            log.exception("on_error raised while handling %r", exc)
