"""Smoke test of an installed wheel, run by ``tests/wheel/run.py`` with the python of a fresh
virtual environment that has nothing but the wheel: what a user gets from ``pip install``.

Prints each check and its figures; exits non-zero on the first failure.
"""

from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path

passed = 0


def check(what: str, ok: bool, figures: str = "") -> None:
    global passed
    print(f"  {'ok  ' if ok else 'FAIL'} {what}{f': {figures}' if figures else ''}", flush=True)
    if not ok:
        print(f"wheel smoke: FAILED after {passed} checks passed")
        sys.exit(1)
    passed += 1


def main() -> None:
    import background_dispatcher
    from background_dispatcher import BackgroundDispatcher
    from background_dispatcher.logging import DispatchingHandler

    package = Path(background_dispatcher.__file__).resolve().parent
    check(
        "imported from the virtual environment, not the source tree",
        package.is_relative_to(Path(sys.prefix).resolve()),
        str(package),
    )
    extension = sorted(p.name for p in package.glob("_background_dispatcher*.so"))
    check("the extension is the abi3 build", extension == ["_background_dispatcher.abi3.so"], ", ".join(extension))
    check(
        "typing files shipped",
        (package / "py.typed").is_file() and (package / "_background_dispatcher.pyi").is_file(),
        "py.typed, _background_dispatcher.pyi",
    )

    batches: list[list[int]] = []
    lock = threading.Lock()

    def send(entries: list[int]) -> None:
        with lock:
            batches.append(entries)

    d: BackgroundDispatcher[int] = BackgroundDispatcher(send, ms_delay=600_000)
    accepted = d.enqueue_many(range(1000))
    flushed = d.flush(timeout=30)
    delivered = [e for b in batches for e in b]
    check(
        "enqueue + flush delivers every entry in order",
        accepted == 1000 and flushed and delivered == list(range(1000)),
        f"accepted {accepted}, delivered {len(delivered)} in {len(batches)} batches",
    )
    closed = d.close(timeout=30)
    refused = not d.enqueue(1000)
    stats = d.stats
    check(
        "close, then enqueue is refused, counters add up",
        closed and refused and stats.enqueued == stats.dispatched == 1000 and stats.rejected == 1,
        f"enqueued {stats.enqueued}, dispatched {stats.dispatched}, rejected {stats.rejected}",
    )

    shipped: list[str] = []
    handler = DispatchingHandler(shipped.extend, ms_delay=600_000, max_batch_entries=10)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    log = logging.getLogger("wheel-smoke")
    log.propagate = False
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    for i in range(25):
        log.info("request %d", i)
    handler.close()
    check(
        "logging handler ships formatted records",
        shipped == [f"INFO request {i}" for i in range(25)] and handler.dropped == 0,
        f"records 25, shipped {len(shipped)}, dropped {handler.dropped}",
    )
    print(f"wheel smoke: all {passed} checks passed")


if __name__ == "__main__":
    main()
