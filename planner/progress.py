"""Progress of long operations: the library says where it is, a front end decides what to show.

Library code calls :func:`stage` at its stage boundaries (``stage("parallelism search")``) and,
inside a loop of known length, :func:`stage` with ``done`` and ``total``. With no reporter
installed (the default, and every Python caller who asks for none) these calls do nothing: the
library prints nothing. A front end installs a reporter for the duration of a call::

    with reporting(StderrProgress("plan")):
        planner.plan(...)

:class:`StderrProgress` is the command line's reporter: on a terminal one line redrawn in place
(``plan [2/4] placement solver  3.1 s``), elsewhere one line per event, always on stderr so that
stdout keeps only results (``--json``). The reporter is held in a :class:`contextvars.ContextVar`,
so concurrent calls (threads, tasks) each see their own.
"""

from __future__ import annotations

import contextvars
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TextIO


@dataclass(frozen=True)
class Event:
    """One report: the stage entered, and how far a counted loop is (``done`` of ``total``)."""

    stage: str
    done: int | None = None
    total: int | None = None


Reporter = Callable[[Event], None]

_REPORTER: contextvars.ContextVar[Reporter | None] = contextvars.ContextVar("planner_progress", default=None)


def stage(name: str, done: int | None = None, total: int | None = None) -> None:
    """Report entering stage ``name`` (``done`` of ``total`` in a counted loop) to the installed
    reporter; nothing when none is installed. A reporter that raises does not stop the work."""
    rep = _REPORTER.get()
    if rep is None:
        return
    try:
        rep(Event(name, done, total))
    except Exception:  # noqa: BLE001 - progress is cosmetic: a broken stream must not fail a plan
        pass


@contextmanager
def reporting(reporter: Reporter | None) -> Iterator[None]:
    """Install ``reporter`` for the calls made inside the block (``None``: silence)."""
    token = _REPORTER.set(reporter)
    try:
        yield
    finally:
        _REPORTER.reset(token)
        close = getattr(reporter, "close", None)
        if callable(close):
            close()


class StderrProgress:
    """The command line's reporter: ``label [done/total] stage  elapsed`` on ``stream`` (stderr).

    On a terminal the line is redrawn in place and ended by :meth:`close`; elsewhere (a log, a
    pipe) each event is one line. ``stages``: the number of stages the command passes, shown as
    ``[i/stages]`` for events without their own count."""

    def __init__(self, label: str, stages: int | None = None, stream: TextIO | None = None) -> None:
        self.label, self.stages = label, stages
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.t0 = time.perf_counter()
        self.seen: list[str] = []
        self._drawn = False

    def __call__(self, ev: Event) -> None:
        if ev.stage not in self.seen:
            self.seen.append(ev.stage)
        if ev.total:
            count = f" [{ev.done}/{ev.total}]"
        elif self.stages:
            count = f" [{min(len(self.seen), self.stages)}/{self.stages}]"
        else:
            count = ""
        line = f"{self.label}{count} {ev.stage}  {time.perf_counter() - self.t0:.1f} s"
        if self.tty:
            self.stream.write("\r" + line[:118].ljust(118))
            self._drawn = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        """End a line redrawn in place (a terminal: the last stage stays shown); nothing otherwise."""
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False


def wants_progress(flag: bool, stream: TextIO | None = None) -> bool:
    """Whether a command shows progress: asked for (``--progress``) or stderr is a terminal."""
    stream = stream if stream is not None else sys.stderr
    return flag or bool(getattr(stream, "isatty", lambda: False)())
