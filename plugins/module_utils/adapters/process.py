# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Child processes of the streams: a client program with its stderr drained, the table-of-contents reader, and a
prefetching iterator so the network overlaps decryption."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import collections
import logging
import os
import queue
import subprocess
import threading

from ..errors import IntegrityError
from .postgres import count_toc_tables

LOG = logging.getLogger("quankey_backup")


CHUNK = 1024 * 1024


F_SETPIPE_SZ = 1031


class _NoProgress:
    def __call__(self, done, total=None):
        return None


NO_PROGRESS = _NoProgress()


class Child:
    """A client program with its stderr drained (bounded) on a thread so it can never block on it."""

    def __init__(self, argv, env, stdin=None, stdout=None, name=None, pass_fds=()):
        self.name = name or os.path.basename(argv[0])
        # Popen, not AnsibleModule.run_command: the engine streams through pipes and also runs without Ansible
        self.proc = subprocess.Popen(argv, env=env, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE,  # pylint: disable=ansible-bad-function
                                     pass_fds=pass_fds)
        self._stderr = collections.deque(maxlen=50)
        self._reader = threading.Thread(target=self._drain, name="%s-stderr" % self.name)
        self._reader.daemon = True
        self._reader.start()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                _grow_pipe(pipe.fileno())

    def _drain(self):
        for line in iter(self.proc.stderr.readline, b""):
            self._stderr.append(line.decode("utf-8", "replace").rstrip())

    def feed(self, data):
        """Write to the program's stdin; False once it has gone away."""
        if not data:
            return True
        try:
            self.proc.stdin.write(data)
            return True
        except (BrokenPipeError, ValueError):
            return False

    def stderr_text(self):
        """The last lines the program wrote to stderr."""
        self._reader.join(timeout=5)
        return "\n".join(self._stderr)

    def wait(self):
        """Close our end of stdin, wait, and return the exit status."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
        status = self.proc.wait()
        self._reader.join(timeout=5)
        return status

    def kill(self):
        """Stop the program now (cleanup after a failure)."""
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.wait()
        except OSError:
            pass

    def describe_exit(self, status):
        """'exited with status 1' or 'was killed by signal 9'."""
        if status < 0:
            return "%s was killed by signal %d" % (self.name, -status)
        return "%s exited with status %d" % (self.name, status)


def _grow_pipe(fd):
    try:
        import fcntl
        fcntl.fcntl(fd, F_SETPIPE_SZ, CHUNK)
    except (ImportError, OSError):
        pass


class TocReader:
    """Feeds the start of an archive to ``pg_restore --list`` (which stops after the table of contents)."""

    def __init__(self, pg):
        self.child = Child(pg.list_argv(), pg.environment(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           name="pg_restore --list")
        self._out = []
        self._open = True
        self._reader = threading.Thread(target=self._collect, name="toc-stdout")
        self._reader.daemon = True
        self._reader.start()

    def _collect(self):
        self._out.append(self.child.proc.stdout.read())

    def feed(self, data):
        """Pass bytes on until pg_restore has read what it needs."""
        if not self._open:
            return
        try:
            self.child.proc.stdin.write(data)
        except (BrokenPipeError, ValueError):
            self._open = False

    def listing(self, step):
        """The archive's table of contents as ``pg_restore --list`` prints it."""
        status = self.child.wait()
        self._reader.join()
        if status != 0:
            raise IntegrityError("the archive's table of contents cannot be read (%s: %s)"
                                 % (self.child.describe_exit(status), self.child.stderr_text() or "no error text"),
                                 step=step)
        return b"".join(self._out).decode("utf-8", "replace")

    def table_count(self, step):
        """The number of TABLE entries in the archive's table of contents."""
        return count_toc_tables(self.listing(step))

    def kill(self):
        """Cleanup after a failure."""
        self.child.kill()


def prefetch(iterable, depth=4):
    """Iterate ``iterable`` on a thread, ``depth`` items ahead (network overlaps decryption)."""
    items = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def produce():
        try:
            for item in iterable:
                while not stop.is_set():
                    try:
                        items.put(("item", item), timeout=0.5)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            items.put(("end", done))
        except BaseException as exc:  # handed to the consumer
            items.put(("error", exc))

    thread = threading.Thread(target=produce, name="prefetch")
    thread.daemon = True
    thread.start()
    try:
        while True:
            kind, value = items.get()
            if kind == "item":
                yield value
            elif kind == "error":
                raise value
            else:
                return
    finally:
        stop.set()
