"""Batch log, analytics and audit entries on a background thread.

``BackgroundDispatcher`` takes entries (any Python objects) on the hot path for almost nothing,
groups them, and on its own thread hands each group to your dispatch function at most every
``ms_delay`` milliseconds. The engine is Rust (dispatcher-core); see the project README for
the full semantics, and the stub (``_background_dispatcher.pyi``) for every parameter.

At interpreter exit every live dispatcher is closed, within ``exit_timeout`` seconds in all.

``background_dispatcher.logging.DispatchingHandler`` is a ``logging.Handler`` built on it, for
shipping log records to a collector.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import sys
import time
import weakref
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ._background_dispatcher import DispatcherStats, ReentrantError, _BackgroundDispatcher, _begin_exit, _close_orphans
from ._runner import in_batch

__all__ = ["BackgroundDispatcher", "DispatcherStats", "ReentrantError", "exit_timeout"]

T = TypeVar("T")

#: Seconds, in total, that interpreter exit spends closing (delivering) every live dispatcher.
#: Set it before exit, e.g. ``background_dispatcher.exit_timeout = 30``.
exit_timeout: float = 5.0

_live: weakref.WeakSet[BackgroundDispatcher[Any]] = weakref.WeakSet()


class BackgroundDispatcher(_BackgroundDispatcher[T], Generic[T]):
    """Batches entries of type ``T`` and hands each batch (a list) to the dispatch function.

    The dispatch function (sync or ``async def``) runs on the dispatcher's thread, one batch at
    a time; ``async`` batches run on the event loop that was running when the dispatcher was
    created, or on a private loop. Use it as a context manager (sync or async) to close it.
    """

    __slots__ = ()

    if not TYPE_CHECKING:  # type checkers see the constructor's real signature, in the stub

        def __init__(self, *args, **kwargs):
            # The work is done by the Rust __new__; this only enrols the dispatcher for exit.
            _live.add(self)

    def __enter__(self) -> BackgroundDispatcher[T]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> BackgroundDispatcher[T]:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aflush(self, timeout: float | None = None) -> bool:
        """``flush`` for asyncio code: waits on a helper thread, never blocking the loop."""
        if in_batch():
            raise ReentrantError("aflush() inside the dispatch function would wait for itself")
        return await asyncio.get_running_loop().run_in_executor(None, self.flush, timeout)

    async def aclose(self, timeout: float | None = None) -> bool:
        """``close`` for asyncio code: waits on a helper thread, never blocking the loop."""
        if in_batch():
            raise ReentrantError("aclose() inside the dispatch function would wait for itself")
        return await asyncio.get_running_loop().run_in_executor(None, self.close, timeout)

    def __del__(self) -> None:
        # Unreachable: stop accepting; the drop that follows waits for the delivery (except
        # where it cannot: on the event loop the batches run on, or after a close deadline).
        try:
            self._close_nowait()
        except BaseException:  # noqa: BLE001 - never raise from __del__
            pass


def _close_all() -> None:
    """Closes every live dispatcher within ``exit_timeout`` seconds, then stops the workers
    from calling into Python, which is about to finalize."""
    deadline = time.monotonic() + float(globals().get("exit_timeout", 5.0))
    for dispatcher in list(_live):
        try:
            dispatcher.close(timeout=max(0.0, deadline - time.monotonic()))
        except BaseException:  # noqa: BLE001 - one dispatcher must not stop the others
            pass
    _close_orphans(max(0.0, deadline - time.monotonic()))
    _begin_exit(max(0.0, deadline - time.monotonic()))


atexit.register(_close_all)


# multiprocessing children started by fork leave through os._exit, which skips atexit; they
# run multiprocessing's own finalizers instead, which the child clears first and then
# re-creates through its after-fork hooks. Register there, once multiprocessing is in use.
class _ForkToken:
    """A weak-referenceable key for multiprocessing's after-fork registry."""


_fork_token = _ForkToken()
_mp_registered = False


def _register_with_multiprocessing() -> None:
    global _mp_registered
    util = sys.modules.get("multiprocessing.util")
    if _mp_registered or util is None:
        return
    _mp_registered = True
    util.register_after_fork(_fork_token, lambda _token: util.Finalize(None, _close_all, exitpriority=100))


_register_with_multiprocessing()
os.register_at_fork(before=_register_with_multiprocessing)
