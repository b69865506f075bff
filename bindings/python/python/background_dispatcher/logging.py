"""``DispatchingHandler``: a ``logging.Handler`` that ships formatted records in batches.

The seed's main use case is shipping logs to a collector. This handler formats each record on
the logging thread (``self.format``), queues the resulting ``str`` into a
``BackgroundDispatcher`` and returns: the dispatch function gets a ``list[str]`` of formatted
records, on the dispatcher's thread, at most every ``ms_delay`` milliseconds. Entries are
``str``, not ``bytes``, so the logging call pays for no encoding; encode in the dispatch
function if the collector wants bytes (byte limits count ``len()`` of the ``str``).

Guarantees, each proven by ``tests/python/test_logging_handler.py``:

- **The logging call never blocks** and never raises because of the dispatcher:
  ``overflow="block"`` is refused with ``ValueError``; a full queue drops the record (counted in
  ``dropped``); exceptions of the dispatch function stay on the dispatcher's thread. A record
  that cannot be formatted goes to ``Handler.handleError``, as with every stdlib handler.
- **No recursion, no deadlock.** Records emitted from inside a DispatchingHandler's callbacks
  (the dispatch function, ``on_error``, ``on_drop``, the library's report of a failed batch),
  this one's or another's, are not queued (that would feed the shipper its own chatter, a batch
  per window forever) but handed to ``fallback`` (default ``logging.lastResort``: stderr,
  WARNING and above) and counted in ``diverted``, as are records refused because the handler
  is closed. ``handle`` does not take the handler's lock (``enqueue`` is thread-safe), so a
  dispatch function that logs while another thread holds that lock in ``flush``/``close``
  (``logging.shutdown`` does) cannot deadlock either.
- **flush / close are bounded and lose nothing**: ``flush()`` waits at most ``flush_timeout``
  seconds for what is queued to be delivered; ``close()`` stops accepting records and waits
  at most ``close_timeout`` seconds for the queue to be delivered, then leaves the rest to be
  delivered in the background (at interpreter exit, within
  ``background_dispatcher.exit_timeout``); it is idempotent, and returns at once when called
  from inside a callback. Bounded matters even without a hung collector:
  ``logging.config.dictConfig`` closes the old handlers while holding logging's module lock,
  which a dispatch function calling ``logging.getLogger`` for a new name waits for; such a
  close ends at ``close_timeout`` and the batches finish afterwards.

For ``logging.config.dictConfig``, every parameter is a keyword::

    "handlers": {"collector": {
        "()": "background_dispatcher.logging.DispatchingHandler",
        "dispatch": "ext://myapp.logs.post_batch",
        "ms_delay": 250,
        "max_queue_entries": 50000,
    }}
"""

# This module is ``background_dispatcher.logging``: every import here is absolute, so
# ``import logging`` below is the standard library's, never this module.
from __future__ import annotations

import contextvars
import inspect
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Literal

from background_dispatcher import BackgroundDispatcher, DispatcherStats, ReentrantError
from background_dispatcher._runner import _is_async

__all__ = ["DispatchingHandler"]

#: The handler whose callback is running, in that callback's thread (or, for an ``async def``
#: dispatch function, its task). A context variable rather than a thread-local so that async
#: batches running on the app's event loop, whose thread also logs normally, are told apart
#: from the app's own records. Per handler: records a shipper logs to *another* handler are
#: that handler's to ship.
_IN_CALLBACK: contextvars.ContextVar[DispatchingHandler | None] = contextvars.ContextVar(
    "background_dispatcher_logging_in_callback", default=None
)

_log = logging.getLogger("background_dispatcher")


class DispatchingHandler(logging.Handler):
    """Formats records and hands them, batched, to ``dispatch`` through a ``BackgroundDispatcher``.

    ``dispatch(entries: list[str])`` (sync or ``async def``) runs on the dispatcher's thread;
    raising fails the batch. The batching options are ``BackgroundDispatcher``'s (see its
    docs), except that ``overflow`` cannot be ``"block"``: a logging call must never wait.

    Handler options:

    - ``level``: the handler's level, as for any ``logging.Handler``.
    - ``flush_timeout`` / ``close_timeout``: seconds ``flush()`` / ``close()`` wait at most.
    - ``fallback``: where records logged from inside this handler's callbacks go instead of
      the queue; ``None`` means ``logging.lastResort`` at the time of the record (stderr,
      WARNING and above); pass ``logging.NullHandler()`` to drop them.
    """

    def __init__(
        self,
        dispatch: Callable[[list[str]], Awaitable[object] | object],
        *,
        ms_delay: float,
        level: int | str = logging.NOTSET,
        max_queue_entries: int | None = 100000,
        max_queue_bytes: int | None = None,
        max_batch_entries: int | None = None,
        max_batch_bytes: int | None = None,
        overflow: Literal["drop_newest", "drop_oldest"] = "drop_newest",
        max_attempts: int = 1,
        retry_backoff: float = 0.1,
        retry_backoff_max: float = 30.0,
        on_drop: Callable[[list[str], str], object] | None = None,
        on_error: Callable[[BaseException, list[str]], object] | None = None,
        flush_timeout: float = 5.0,
        close_timeout: float = 5.0,
        fallback: logging.Handler | None = None,
    ) -> None:
        if overflow not in ("drop_newest", "drop_oldest"):
            raise ValueError(
                f"overflow={overflow!r}: a logging handler must never block the logging call; "
                "use 'drop_newest' or 'drop_oldest'"
            )
        for name, seconds in (("flush_timeout", flush_timeout), ("close_timeout", close_timeout)):
            if not seconds >= 0:  # also refuses NaN
                raise ValueError(f"{name} must be >= 0 seconds, got {seconds!r}")
        if not callable(dispatch):
            raise TypeError(f"dispatch must be callable, got {type(dispatch).__name__}")
        self.flush_timeout = float(flush_timeout)
        self.close_timeout = float(close_timeout)
        self.fallback = fallback
        self._user_dispatch = dispatch
        self._user_on_drop = on_drop
        self._user_on_error = on_error
        self._diverted = 0
        self._diverted_lock = threading.Lock()
        self._closed = False
        self._dispatcher: BackgroundDispatcher[str] = BackgroundDispatcher(
            self._dispatch_async if _is_async(dispatch) else self._dispatch_sync,
            ms_delay=ms_delay,
            max_queue_entries=max_queue_entries,
            max_queue_bytes=max_queue_bytes,
            max_batch_entries=max_batch_entries,
            max_batch_bytes=max_batch_bytes,
            overflow=overflow,
            max_attempts=max_attempts,
            retry_backoff=retry_backoff,
            retry_backoff_max=retry_backoff_max,
            on_drop=self._on_drop,
            on_error=self._on_error,
        )
        # Last: Handler.__init__ enrols the handler for logging.shutdown(), which must never
        # meet one whose dispatcher failed to build.
        super().__init__(level)

    # -- the logging side: runs on the threads that log ------------------------------------

    def handle(self, record: logging.LogRecord) -> bool:
        """Filters, then emits; unlike ``logging.Handler.handle`` takes no lock (``enqueue`` is
        thread-safe), so no thread that holds this handler's lock can stall a logging call."""
        rv: object = self.filter(record)
        if isinstance(rv, logging.LogRecord):  # Python 3.12+: a filter may return a new record
            record = rv
        if not rv:
            return False
        if _IN_CALLBACK.get() is not None:
            # Inside any DispatchingHandler's callbacks, not only this one's: two handlers
            # whose dispatch functions log would otherwise feed each other a batch per window.
            self._divert(record)
        else:
            self.emit(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        """Formats ``record`` and queues the text; never waits. A refused entry (queue full,
        closed) is counted in ``dropped``; one refused because the handler is closed (say,
        logged by an exit hook that runs after the package's) also goes to ``fallback``, so
        that it is not lost unseen. A formatting error goes to ``handleError``."""
        try:
            if not self._dispatcher.enqueue(self.format(record)) and self._dispatcher.closed:
                self._divert(record)
        except Exception:  # noqa: BLE001 - the logging call must not fail; handleError reports
            self.handleError(record)

    def flush(self) -> None:
        """Dispatches what is queued now and waits up to ``flush_timeout`` seconds for it.

        Returns at once where waiting would deadlock (inside a callback, or on the event loop
        that runs an async dispatch function)."""
        if _IN_CALLBACK.get() is self:
            return
        try:
            self._dispatcher.flush(timeout=self.flush_timeout)
        except ReentrantError:
            pass

    def close(self) -> None:
        """Stops accepting records and delivers what is queued, waiting at most
        ``close_timeout`` seconds; idempotent. What is still queued at that deadline is not
        dropped: it is delivered in the background (and at interpreter exit, within
        ``background_dispatcher.exit_timeout``). Inside a callback, or on the event loop that
        runs async batches, where waiting would deadlock, this returns at once."""
        if not self._closed:
            self._closed = True
            if _IN_CALLBACK.get() is self:
                # On the worker's own thread the dispatcher cannot begin its close (its worker
                # is busy with this very batch): a helper thread does, at once.
                threading.Thread(
                    target=self._dispatcher._close_nowait, name="DispatchingHandler.close", daemon=True
                ).start()
            else:
                try:
                    self._dispatcher.flush(timeout=self.close_timeout)
                except ReentrantError:  # on the event loop that runs async batches
                    pass
                self._dispatcher._close_nowait()  # refuses new records; the worker drains the rest
        super().close()

    # -- counters ---------------------------------------------------------------------------

    @property
    def stats(self) -> DispatcherStats:
        """The dispatcher's counters (one consistent snapshot)."""
        return self._dispatcher.stats

    @property
    def dropped(self) -> int:
        """Records formatted but never delivered: refused by a full (or closed) queue, evicted
        by ``"drop_oldest"``, in a batch that failed for good, or abandoned at the close
        deadline. Records that failed to format are not counted (``handleError`` saw them)."""
        s = self._dispatcher.stats
        return s.rejected + s.evicted + s.failed + s.abandoned

    @property
    def diverted(self) -> int:
        """Records handed to ``fallback``: logged from inside a DispatchingHandler's callbacks,
        or refused because this handler was closed."""
        return self._diverted

    # -- the dispatcher side: callbacks, each under the recursion guard ---------------------

    def _divert(self, record: logging.LogRecord) -> None:
        with self._diverted_lock:
            self._diverted += 1
        fallback = self.fallback if self.fallback is not None else logging.lastResort
        if fallback is not None and record.levelno >= fallback.level:
            fallback.handle(record)

    def _dispatch_sync(self, entries: list[str]) -> object:
        token = _IN_CALLBACK.set(self)
        try:
            result = self._user_dispatch(entries)
        finally:
            _IN_CALLBACK.reset(token)
        if inspect.isawaitable(result):  # a plain function that returned a coroutine
            return self._guarded(result)
        return result

    async def _dispatch_async(self, entries: list[str]) -> object:
        token = _IN_CALLBACK.set(self)  # in this batch's task only: the loop's thread logs too
        try:
            result = self._user_dispatch(entries)
            if inspect.isawaitable(result):
                return await result
            return result
        finally:
            _IN_CALLBACK.reset(token)

    async def _guarded(self, awaitable: Awaitable[object]) -> object:
        token = _IN_CALLBACK.set(self)
        try:
            return await awaitable
        finally:
            _IN_CALLBACK.reset(token)

    def _on_drop(self, entries: list[str], reason: str) -> None:
        # "evicted" runs on the logging thread, inside emit: the guard also stops a user
        # on_drop that logs from evicting again, recursively.
        token = _IN_CALLBACK.set(self)
        try:
            if self._user_on_drop is not None:
                self._user_on_drop(entries, reason)
        except Exception:  # noqa: BLE001 - a hook must not break the worker or the logging call
            _log.exception("DispatchingHandler on_drop raised (%d records, reason %r)", len(entries), reason)
        finally:
            _IN_CALLBACK.reset(token)

    def _on_error(self, exc: BaseException, entries: list[str]) -> None:
        token = _IN_CALLBACK.set(self)
        try:
            if self._user_on_error is not None:
                self._user_on_error(exc, entries)
            else:
                _log.error("log dispatch function raised; %d records not delivered", len(entries), exc_info=exc)
        except Exception:  # noqa: BLE001
            _log.exception("DispatchingHandler on_error raised while handling %r", exc)
        finally:
            _IN_CALLBACK.reset(token)

    def __repr__(self) -> str:
        level = logging.getLevelName(self.level)
        return (
            f"<{type(self).__name__} {getattr(self._user_dispatch, '__qualname__', self._user_dispatch)!r} ({level})>"
        )
