# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Progress people can follow, and how long each stage of a run took.

On a terminal a line is redrawn: bytes, of a total (``~`` when it is an estimate, such as a
backup's from the database's size), the share, the rate and the time left. Elsewhere (cron,
systemd, the modules) a log line says the same every PROGRESS_LOG_SECONDS, through the engine's
logging, so that a long run is never silent. A run's stages (:class:`Stages`) are timed with the
same clock, and their seconds go into its result (``stage_seconds``).

Clocks are injected, so the tests drive time instead of sleeping.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import contextlib
import logging
import math
import os
import threading
import time

from .errors import ConfigError
from .units import human_duration, human_size

PROGRESS_LOG_SECONDS = 30  # a progress log line this often when not on a terminal
INTERVAL_VARIABLE = "QUANKEY_PROGRESS_LOG_SECONDS"  # another interval, for tests and troubleshooting
REDRAW_SECONDS = 0.5  # a terminal's line is redrawn at most this often
LOG = logging.getLogger("quankey_backup")


def log_interval(environ=None):
    """Seconds between progress log lines: $QUANKEY_PROGRESS_LOG_SECONDS when set, else PROGRESS_LOG_SECONDS."""
    value = (os.environ if environ is None else environ).get(INTERVAL_VARIABLE, "").strip()
    if not value:
        return float(PROGRESS_LOG_SECONDS)
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError("%s is %r: give the seconds between progress log lines, a number above 0 such as 30 (or "
                          "unset it for the default, %d)" % (INTERVAL_VARIABLE, value, PROGRESS_LOG_SECONDS))
    return seconds


def floor_seconds(seconds):
    """Seconds to the millisecond below, so that stages never add up to more than the run they are part of."""
    return math.floor(max(seconds, 0.0) * 1000) / 1000.0


def eta_seconds(done, total, elapsed):
    """Seconds left at the rate so far, or None when that cannot be said (no total, nothing done, the total passed)."""
    if not total or done <= 0 or elapsed <= 0 or done >= total:
        return None
    return (total - done) * elapsed / done


def progress_text(done, elapsed, total=None, estimated=False):
    """``1.2 GiB of ~3.0 GiB (40 %), 25.0 MiB/s, ETA 1m 22s``: bytes, total, share, rate and time left, as known."""
    text = human_size(done)
    if total:
        if done < total:
            text += " of %s%s (%d %%)" % ("~" if estimated else "", human_size(total), 100 * done // total)
        elif estimated:
            text += " (past the ~%s estimated)" % human_size(total)
        else:
            text += " of %s (100 %%)" % human_size(total)
    if elapsed > 0:
        text += ", %s/s" % human_size(done / elapsed)
    eta = eta_seconds(done, total, elapsed)
    if eta is not None:
        text += ", ETA %s" % human_duration(eta)
    return text


def stage_words(name):
    """A stage's key (``dump_upload``) as people read it (``dump+upload``)."""
    return name.replace("_", "+")


def stages_text(seconds):
    """``{"dump_upload": 9.12, "commit": 0.1}`` (a result's ``stage_seconds``) as ``dump+upload 9.1s, commit 0.1s``."""
    return ", ".join("%s %.1fs" % (stage_words(name), value) for name, value in seconds.items())


class Progress:
    """Where a run's byte counts go: ``progress(done, total=None)``.

    ``stream`` on a terminal: a line redrawn there. Otherwise (no stream, or not a terminal) a log
    line every ``interval`` seconds (default :func:`log_interval`): from the byte counts as they
    come, and, while a stage runs, from a heartbeat thread too, so a stage that reports no bytes
    for a while (pg_restore building indexes) still says it is running. ``clock`` is injectable;
    ``heartbeat=False`` leaves the thread out (the tests call :meth:`poll`).
    """

    def __init__(self, label, stream=None, clock=None, interval=None, heartbeat=True, log=None):
        self.label = label
        self.stream = stream if stream is not None and stream.isatty() else None
        self.clock = clock or time.monotonic
        self.interval = log_interval() if interval is None else float(interval)
        self.heartbeat = heartbeat and self.stream is None
        self.log = log or LOG
        self.stage = None
        self.total = None
        self.estimated = False
        self.done = None
        self._lock = threading.RLock()
        self._counting_since = self._shown_at = self._stage_started = self._counted_at = self.clock()
        self._drawn = False
        self._beat = None

    def __call__(self, done, total=None):
        with self._lock:
            now = self.clock()
            if self.done is not None and done < self.done:  # a new stream, begun since the last count: its own rate
                self._counting_since = self._counted_at
            self.done, self._counted_at = done, now
            if total is not None:
                self.total, self.estimated = total, False
            if self.stream is not None:
                if not self._drawn or now - self._shown_at >= REDRAW_SECONDS:
                    self._draw(now)
            elif now - self._shown_at >= self.interval:
                self._log(now)

    def expect(self, total, estimated=False):
        """The total the next byte counts go towards (``estimated``: shown with ``~``, and no share past it)."""
        with self._lock:
            self.total, self.estimated = total, estimated

    def text(self, now=None):
        """The progress line as it stands (without the label)."""
        now = self.clock() if now is None else now
        stage = stage_words(self.stage) + ": " if self.stage else ""
        if self.done is None:
            return "%srunning for %s" % (stage, human_duration(now - self._stage_started))
        text = stage + progress_text(self.done, self._counted_at - self._counting_since, self.total, self.estimated)
        idle = now - self._counted_at
        if idle >= max(self.interval, 1.0):  # the heartbeat's line: the rate is the one the bytes came at
            text += ", no new bytes for %s" % human_duration(idle)
        return text

    def poll(self):
        """Log the line if one is due (the heartbeat's call; not on a terminal)."""
        with self._lock:
            now = self.clock()
            if self.stream is None and now - self._shown_at >= self.interval:
                self._log(now)

    def _log(self, now):
        self._shown_at = now
        self.log.info("%s progress, %s", self.label, self.text(now))

    def _draw(self, now):
        self._shown_at = now
        self._drawn = True
        self.stream.write("\r%s: %s   " % (self.label, self.text(now)))
        self.stream.flush()

    def enter(self, stage, total=None, estimated=False):
        """A stage begins: its byte counts start from nothing, towards ``total`` if known."""
        with self._lock:
            self._end_line()
            self.stage, self.total, self.estimated, self.done = stage, total, estimated, None
            self._counting_since = self._shown_at = self._stage_started = self._counted_at = self.clock()
        if self.heartbeat:
            self._beat = _Heartbeat(self)

    def leave(self):
        """The stage ended (its line, on a terminal, is ended)."""
        if self._beat is not None:
            self._beat.stop()
            self._beat = None
        with self._lock:
            if self.stream is not None and self._drawn:
                self._draw(self.clock())
            self._end_line()
            self.stage = None

    def _end_line(self):
        if self.stream is not None and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
        self._drawn = False

    def close(self):
        """End the terminal's line (after the run, whatever happened)."""
        if self._beat is not None:
            self._beat.stop()
            self._beat = None
        with self._lock:
            self._end_line()


class _Heartbeat:
    """A daemon thread that asks a :class:`Progress` every second whether a log line is due, until stopped."""

    def __init__(self, progress):
        self._stopped = threading.Event()
        self._progress = progress
        self._thread = threading.Thread(target=self._run, name="%s-progress" % progress.label)
        self._thread.daemon = True
        self._thread.start()

    def _run(self):
        while not self._stopped.wait(min(self._progress.interval, 1.0)):
            self._progress.poll()

    def stop(self):
        self._stopped.set()
        self._thread.join()


class Stages:
    """How long each stage of one run took (its ``stage_seconds``), each stage told to the run's :class:`Progress`.

    ``with stages("dump_upload", total=size, estimated=True): ...``; a stage entered twice adds up.
    Stages are timed with the progress's clock, as is :meth:`elapsed` (from this object's creation), so
    their sum is never more than the run's time.
    """

    def __init__(self, progress):
        self.progress = progress
        self.clock = progress.clock
        self.started = self.clock()
        self.seconds = {}
        self.order = []

    @contextlib.contextmanager
    def __call__(self, name, total=None, estimated=False):
        begun = self.clock()
        self.progress.enter(name, total, estimated)
        try:
            yield self.progress
        finally:
            self.progress.leave()
            if name not in self.seconds:
                self.order.append(name)
            self.seconds[name] = self.seconds.get(name, 0.0) + self.clock() - begun

    def result(self):
        """``{stage: seconds}`` (to the millisecond below)."""
        return dict((name, floor_seconds(self.seconds[name])) for name in self.order)

    def elapsed(self):
        """Seconds since the run began (to the millisecond below)."""
        return floor_seconds(self.clock() - self.started)

    def text(self):
        """The stages for people (:func:`stages_text`)."""
        return stages_text(self.result())
