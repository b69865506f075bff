"""The Rust extension behind ``background_dispatcher`` (hand-written stub, checked by
``mypy.stubtest`` in ``make test``)."""

from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Generic, Literal, TypeVar, final

from typing_extensions import Self, disjoint_base

__all__ = ["_BackgroundDispatcher", "DispatcherStats", "ReentrantError", "_begin_exit", "_close_orphans"]

_T = TypeVar("_T")

@final
class DispatcherStats:
    """One consistent snapshot of a dispatcher's counters:
    ``enqueued == dispatched + failed + evicted + abandoned + queued_entries + in_flight_entries``.
    Only the last three (gauges) can decrease between snapshots."""

    @property
    def enqueued(self) -> int:
        """Entries accepted by ``enqueue``."""
    @property
    def rejected(self) -> int:
        """Entries refused by ``enqueue`` (queue full, too large, closed)."""
    @property
    def dispatched(self) -> int:
        """Entries in a batch whose dispatch function returned without raising."""
    @property
    def failed(self) -> int:
        """Entries in a batch that failed for good (given to ``on_drop`` as "failed")."""
    @property
    def evicted(self) -> int:
        """Entries evicted by ``overflow="drop_oldest"``."""
    @property
    def abandoned(self) -> int:
        """Entries removed at a ``close`` deadline."""
    @property
    def batches(self) -> int:
        """Calls of the dispatch function, retries included."""
    @property
    def retries(self) -> int:
        """Calls of the dispatch function that were retries."""
    @property
    def queued_entries(self) -> int:
        """Entries waiting in the queue."""
    @property
    def queued_bytes(self) -> int:
        """Bytes (``len()`` of bytes-like and ``str`` entries) waiting in the queue."""
    @property
    def in_flight_entries(self) -> int:
        """Entries of the batch being dispatched or waiting for a retry."""
    def __eq__(self, other: object, /) -> bool: ...
    def __ne__(self, other: object, /) -> bool: ...

class ReentrantError(RuntimeError):
    """``flush()`` or ``close()`` was called from inside the dispatch function (or, for an async
    dispatch function, from the event loop that runs it), where waiting would deadlock."""

@disjoint_base
class _BackgroundDispatcher(Generic[_T]):
    """The engine of ``BackgroundDispatcher``; starts a worker thread.

    Parameters (all but ``dispatch`` keyword-only):

    - ``dispatch``: called with each batch, a ``list`` of the very objects enqueued, in
      per-thread enqueue order, on the dispatcher's thread, one batch at a time. May be
      ``async def``. Raising fails the batch.
    - ``ms_delay``: minimum milliseconds between dispatch starts (> 0), except for a full batch
      (a batch limit reached), ``flush`` and ``close``, which do not wait. The first entry in an
      empty queue opens a window of ``ms_delay``; when it ends, everything queued is dispatched.
    - ``max_queue_entries`` / ``max_queue_bytes``: bounds on what is queued (the batch in flight
      is not counted); ``None`` = no limit.
    - ``max_batch_entries`` / ``max_batch_bytes``: batch size limits; a full batch is dispatched
      without waiting for its window. ``None`` = no limit.
    - ``overflow``: at a queue bound, ``"drop_newest"`` refuses the new entry,
      ``"drop_oldest"`` evicts the oldest (to ``on_drop``, reason ``"evicted"``), ``"block"``
      waits up to ``block_timeout`` seconds (default 1.0; ``float("inf")`` = forever) with the
      GIL released.
    - ``max_attempts``, ``retry_backoff``, ``retry_backoff_max``: retries of a failed batch,
      with exponential, jittered backoff in seconds.
    - ``on_drop(entries, reason)``: entries that leave without a successful dispatch; reason is
      ``"failed"``, ``"evicted"`` or ``"shutdown_timeout"``.
    - ``on_error(exc, entries)``: exceptions raised by the dispatch function; without it they
      are logged with traceback on the logger ``"background_dispatcher"``.

    Byte limits count ``len()`` of ``bytes``, ``bytearray`` and ``str`` entries (``nbytes``
    of a ``memoryview``); other objects count 0 bytes, so only the entry limits bound them.
    """

    def __new__(
        cls,
        dispatch: Callable[[list[_T]], Awaitable[object] | object],
        /,
        *,
        ms_delay: float,
        max_queue_entries: int | None = 100000,
        max_queue_bytes: int | None = None,
        max_batch_entries: int | None = None,
        max_batch_bytes: int | None = None,
        overflow: Literal["drop_newest", "drop_oldest", "block"] = "drop_newest",
        block_timeout: float | None = None,
        max_attempts: int = 1,
        retry_backoff: float = 0.1,
        retry_backoff_max: float = 30.0,
        on_drop: Callable[[list[_T], str], object] | None = None,
        on_error: Callable[[BaseException, list[_T]], object] | None = None,
    ) -> Self: ...
    def enqueue(self, entry: _T, /) -> bool:
        """Queues ``entry`` (kept as is, not copied); True if accepted, False if refused (queue
        full, too large, closed). Keeps the GIL and never waits, except with
        ``overflow="block"``."""
    def enqueue_many(self, entries: Iterable[_T], /) -> int:
        """Queues every entry; returns how many were accepted."""
    def flush(self, timeout: float | None = None) -> bool:
        """Dispatches what is queued now (ignoring the window) and waits, GIL released, until
        every entry accepted before the call is dispatched or dropped. False if ``timeout``
        seconds passed first. Raises ``ReentrantError`` where waiting would deadlock."""
    def close(self, timeout: float | None = None) -> bool:
        """Stops accepting entries, dispatches everything queued and waits (GIL released).
        At the deadline, entries still queued go to ``on_drop`` as ``"shutdown_timeout"`` and
        False is returned. Idempotent. Raises ``ReentrantError`` where waiting would deadlock."""
    def _close_nowait(self) -> None: ...
    def __class_getitem__(cls, item: Any, /) -> Any: ...
    @property
    def closed(self) -> bool:
        """Whether ``close`` has begun: every ``enqueue`` is refused from then on."""
    @property
    def stats(self) -> DispatcherStats:
        """A consistent snapshot of the counters."""

def _begin_exit(timeout: float) -> bool: ...
def _close_orphans(timeout: float) -> None: ...
