"""SIGTERM and Ctrl-C end a run as `interrupted`, never as a traceback.

    with interrupts():      SIGTERM (timeout, SLURM, container runtimes) and SIGINT (Ctrl-C)
        ...                 raise RunInterrupted in the main thread, wherever the run is: the
                            lifecycle marks the manifest `interrupted`, keeps predictions.jsonl
                            (every finished item was fsynced as it finished) and the CLI prints
                            one line saying how to resume
    (previous handlers back on exit, so a sweep's next job and the caller see their own)

RunInterrupted subclasses KeyboardInterrupt, so code that already lets Ctrl-C through (the
engine, Hydra) lets it through too. Off the main thread (signals cannot be set there) the
context does nothing.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator


class RunInterrupted(KeyboardInterrupt):
    """The run got SIGTERM or SIGINT; `signal_name` says which."""

    def __init__(self, signum: int):
        self.signum = signum
        self.signal_name = signal.Signals(signum).name
        super().__init__(self.signal_name)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


def _raise(signum, frame) -> None:
    raise RunInterrupted(signum)


@contextlib.contextmanager
def interrupts() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {sig: signal.signal(sig, _raise) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
