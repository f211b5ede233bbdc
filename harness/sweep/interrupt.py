"""Ctrl-C on a sweep: let Tune save its state, then stop the driver (exit 130).

Ray Tune's own SIGINT handler ends ``Tuner.fit`` early and saves the experiment state,
but ``fit`` then returns as if the experiment had finished. :class:`InterruptWatch`
(a Tune callback, so it is installed after Tune's handler) wraps that handler and
remembers the signal, so the driver can stop instead of going on to the next phase.
SIGTERM is treated like SIGINT.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Iterator

from ray import tune


class InterruptWatch(tune.Callback):
    """Records SIGINT/SIGTERM during ``Tuner.fit`` and passes them on to Tune."""

    def __init__(self) -> None:
        self.interrupted: str | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"interrupted": None}

    def setup(self, **info: Any) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        tune_handler = signal.getsignal(signal.SIGINT)

        def on_signal(signum: int, frame: Any) -> None:
            self.interrupted = signal.Signals(signum).name
            if callable(tune_handler) and tune_handler not in (signal.default_int_handler,):
                tune_handler(signal.SIGINT, frame)  # Tune stops the loop, saves its state
            else:
                raise KeyboardInterrupt

        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, on_signal)


@contextlib.contextmanager
def watching() -> Iterator[InterruptWatch]:
    """An :class:`InterruptWatch` for one ``fit``; the signal handlers of before come
    back afterwards (Tune leaves its own SIGINT handler installed otherwise, and a
    later Ctrl-C would go to a finished experiment)."""
    main = threading.current_thread() is threading.main_thread()
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)} if main else {}
    try:
        yield InterruptWatch()
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
