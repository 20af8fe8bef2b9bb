# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The host's run lock: one backup run at a time on a host, whoever starts it.

The scheduled runner (roles/pg_backup/templates/quankey-backup-run.sh.j2) holds
``flock`` on ``<home>/backup.lock`` for its whole run. :class:`RunLock` takes the
same kind of lock (``fcntl.flock``, exclusive, on the same file), so a backup
started by a module waits for a scheduled run in progress, and a scheduled run
that starts meanwhile finds the lock held and skips. The lock goes with the open
file: it is released on exit, also when the process is killed.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import fcntl
import os
import time

from ..errors import ConfigError, RefusedError

POLL_SECONDS = 0.2


class LockBusyError(RefusedError):
    """Another run held the lock for longer than we were asked to wait."""


class RunLock:
    """An exclusive ``flock`` on ``path``, waited for at most ``wait`` seconds (0: only try once).

    Use it as a context manager; ``label`` names the wait in errors (``lock_wait``,
    the option the caller set). The file is created (mode 0600) when missing; its
    directory must exist.
    """

    def __init__(self, path, wait, label="lock_wait", clock=time.monotonic, sleep=time.sleep):
        if not path:
            raise ConfigError("the run lock file is empty: give the path the scheduled runs lock "
                              "(e.g. /var/lib/quankey-backup/backup.lock)")
        try:
            self.wait = float(wait)
        except (TypeError, ValueError):
            raise ConfigError("%s %r is not a number of seconds" % (label, wait))
        if self.wait < 0:
            raise ConfigError("%s is %g: give 0 (do not wait) or more seconds" % (label, self.wait))
        self.path = path
        self.label = label
        self.waited = 0.0
        self._clock = clock
        self._sleep = sleep
        self._fd = None

    def check(self):
        """Whether the lock could be taken here, without taking it or creating anything (check mode): ConfigError if
        not. A lock held by a run in progress is fine: the real run waits for it."""
        if os.path.exists(self.path):
            if not os.path.isfile(self.path) or not os.access(self.path, os.R_OK | os.W_OK):
                raise ConfigError("cannot open the run lock %s: it is not a file this user may read and write"
                                  % self.path, step="lock")
        elif not os.access(os.path.dirname(os.path.abspath(self.path)), os.W_OK | os.X_OK):
            raise ConfigError("cannot create the run lock %s: its directory is missing or this user may not write "
                              "it (it must be a file the backup user may write, in an existing directory)"
                              % self.path, step="lock")

    def acquire(self):
        """Take the lock, waiting up to ``wait`` seconds; LockBusyError when it stays held, ConfigError when it cannot
        be opened."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        except OSError as exc:
            raise ConfigError("cannot open the run lock %s: %s (it must be a file the backup user may write, in an "
                              "existing directory)" % (self.path, exc.strerror or exc), step="lock")
        started = self._clock()
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                        raise ConfigError("cannot lock %s: %s" % (self.path, exc.strerror or exc), step="lock")
                elapsed = self._clock() - started
                if elapsed >= self.wait:
                    raise LockBusyError(
                        "another run (the scheduled backup?) held the run lock %s for the %g s this run waited "
                        "(%s): nothing was done; try again once it is finished, or wait longer"
                        % (self.path, self.wait, self.label), step="lock")
                self._sleep(min(POLL_SECONDS, self.wait - elapsed))
        except BaseException:
            os.close(fd)
            raise
        self.waited = self._clock() - started
        self._fd = fd
        return self

    def release(self):
        """Let the lock go (closing the file releases it)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc_info):
        self.release()
        return False
