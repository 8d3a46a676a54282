"""A live progress line for long work (a sweep's trials): how many finished, failed and are
running, the rate and an ETA. On a terminal it is one line rewritten in place; otherwise a few
plain lines (each tenth of the work, or every 30 s), so a log stays short. A Ray Tune callback
feeds it from the controller's trial states."""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

Echo = Callable[[str], None]


def _duration(seconds: float) -> str:
    """``45s``, ``3m05s``, ``1h02m``."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Progress:
    """Counts of ``total`` items shown as one line, at most every ``min_interval`` seconds
    (and always at the end). ``tty``: rewrite one line with ``\\r`` (default: whether stdout
    is a terminal and ``echo`` is ``print``); else ``echo`` a plain line when another tenth
    is done or ``heartbeat`` seconds have passed."""

    def __init__(
        self,
        total: int,
        echo: Echo = print,
        *,
        what: str = "trials",
        tty: bool | None = None,
        min_interval: float = 2.0,
        heartbeat: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total, self.echo, self.what, self.clock = max(total, 0), echo, what, clock
        self.tty = (echo is print and sys.stdout.isatty()) if tty is None else tty
        self.min_interval, self.heartbeat = min_interval, heartbeat
        self.start = clock()
        self._last: float | None = None  # when a line was last shown
        self._tenth = 0  # the tenths of the work done at the last plain line
        self._open = False  # a terminal line is shown without its newline
        self.finished = False

    def due(self) -> bool:
        """Whether a line may be shown now (cheap: callers count only when it is due)."""
        return self._last is None or self.clock() - self._last >= self.min_interval

    def line(self, done: int, failed: int, running: int, *, final: bool = False) -> str:
        """``progress: 5/12 trials finished (1 failed), 2 running, 3.1 trials/min, ETA 2m15s``."""
        elapsed = self.clock() - self.start
        rate = done / elapsed * 60 if elapsed > 0 else 0.0
        if final:
            tail = f"took {_duration(elapsed)}"
        elif done and rate > 0:
            tail = f"ETA {_duration((self.total - done) / rate * 60)}"
        else:
            tail = "ETA ?"
        return (
            f"progress: {done}/{self.total} {self.what} finished ({failed} failed), "
            f"{running} running, {rate:.{1 if rate >= 1 else 2}f} {self.what}/min, {tail}"
        )

    def update(self, done: int, failed: int, running: int, *, final: bool = False) -> None:
        """Show the counts if a line is due (the final line always, once)."""
        if self.finished or not (final or self.due()) or (done >= self.total > 0 and not final):
            return  # (all done: the final line follows)
        now, tenth = self.clock(), done * 10 // self.total if self.total else 10
        quiet = (
            self._last is not None and tenth <= self._tenth and now - self._last < self.heartbeat
        )
        if quiet and not (final or self.tty):
            return  # plain lines: a new tenth of the work, or the heartbeat
        text = self.line(done, failed, running, final=final)
        self._last, self._tenth = now, tenth
        self.finished = final
        if self.tty:
            sys.stdout.write(f"\r{text}\x1b[K" + ("\n" if final else ""))
            sys.stdout.flush()
            self._open = not final
        else:
            self.echo(text)

    def close(self) -> None:
        """End a terminal line left open (the work stopped before its final line)."""
        if self._open:
            sys.stdout.write("\n")
            sys.stdout.flush()
            self._open = False


_ACTIVE: list[Progress] = []  # the progress the running Tune controller reports to


@contextmanager
def reporting(progress: Progress) -> Iterator[Progress]:
    """Make ``progress`` the one ``tune_callback`` reports to while the block runs."""
    _ACTIVE.append(progress)
    try:
        yield progress
    finally:
        _ACTIVE.remove(progress)
        progress.close()


def _report(trials: list[Any], final: bool = False) -> None:
    """Count the controller's trials into the active progress: finished (terminated or
    errored), failed (errored, or a trial that reported ``failed``), running."""
    if not _ACTIVE or not (final or _ACTIVE[-1].due()):
        return
    done = failed = running = 0
    for t in trials:
        if t.status in ("TERMINATED", "ERROR"):
            done += 1
            failed += t.status == "ERROR" or bool((t.last_result or {}).get("failed"))
        elif t.status == "RUNNING":
            running += 1
    _ACTIVE[-1].update(done, failed, running, final=final)


@functools.cache
def _callback_class() -> type:
    from ray import tune

    class TuneProgress(tune.Callback):
        """Stateless (Tune pickles it into a restorable experiment): it reports to whatever
        progress is active in the process that runs the controller."""

        def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
            _report(trials)

        def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
            _report(trials, final=True)

    return TuneProgress


def tune_callback() -> Any:
    """A Ray Tune callback that feeds the active ``Progress`` (see ``reporting``)."""
    return _callback_class()()
