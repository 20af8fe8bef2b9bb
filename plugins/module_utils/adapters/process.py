# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Child processes of the streams: a client program with its stderr drained, the table-of-contents reader, and a
prefetching iterator so the network overlaps decryption."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import collections
import json
import logging
import os
import queue
import subprocess
import threading

from ..errors import IntegrityError, PostgresError
from .postgres import QUERY_PGOPTIONS, count_toc_tables, explain_client_error, quote_ident

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


# The tables whose rows a backup counts (BACKUP_COUNT_ROWS): those holding data (relkind r: a partitioned table's rows
# are its partitions'), outside the system schemas, not an extension's; each as one JSON line [schema, name].
ROW_COUNT_TABLES_SQL = (
    "SELECT pg_catalog.jsonb_build_array(n.nspname, c.relname)::text FROM pg_catalog.pg_class c "
    "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r' "
    "AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%' "
    "AND n.nspname NOT LIKE 'pg_temp%' AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d "
    "WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.objid = c.oid AND d.deptype = 'e') "
    "ORDER BY 1")


class SnapshotSession:
    """A psql session holding a REPEATABLE READ transaction open whose snapshot pg_dump takes (``--snapshot``).

    ``open()`` starts it and returns the exported snapshot's id; ``count_rows()`` counts the rows of every user table
    in that snapshot, so the counts are exactly what the dump holds (a full scan per table); ``close()`` ends the
    transaction (read only: nothing to commit). The session's locks (ACCESS SHARE on each table counted) last until
    then, and its own lock waits end after ``lock_wait_timeout`` seconds, as pg_dump's do. SQL goes to psql's stdin;
    names reach SQL only quoted (quote_ident), and come back as JSON, one line each.
    """

    def __init__(self, pg, database, lock_wait_timeout):
        self.pg = pg
        self.database = database
        self.lock_wait_timeout = int(lock_wait_timeout)
        self.child = None

    def open(self):
        """Start the session; the snapshot id (``pg_export_snapshot()``)."""
        argv = [self.pg.tool("psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]
        argv += self.pg.connection_args(self.database) + ["-f", "-"]
        env = self.pg.environment()
        env["PGOPTIONS"] = QUERY_PGOPTIONS
        self.child = Child(argv, env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, name="psql (snapshot)")
        return self._ask("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY;\nSET LOCAL lock_timeout = '%ds';\n"
                         "SET LOCAL row_security = off;\nSELECT pg_catalog.pg_export_snapshot();\n"
                         % self.lock_wait_timeout, 1)[0]

    def count_rows(self):
        """``[[schema, table, rows], ...]`` of every user table (see ROW_COUNT_TABLES_SQL), in the snapshot."""
        self._send(ROW_COUNT_TABLES_SQL + ";\nSELECT 'end-of-tables';\n")
        tables = []
        while True:
            line = self._line()
            if line == "end-of-tables":
                break
            tables.append(json_pair(line))
        counts = []
        for schema, table in tables:
            rows = self._ask("SELECT pg_catalog.count(*) FROM %s.%s;\n" % (quote_ident(schema), quote_ident(table)), 1)
            counts.append([schema, table, int(rows[0])])
        return counts

    def close(self):
        """End the transaction and the session (also after a failure; never raises)."""
        if self.child is None:
            return
        child, self.child = self.child, None
        try:
            child.feed(b"ROLLBACK;\n")
            child.wait()
        except OSError:
            child.kill()

    def _send(self, sql):
        if not self.child.feed(sql.encode("utf-8")):
            self._fail()
        try:
            self.child.proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            self._fail()

    def _line(self):
        line = self.child.proc.stdout.readline()
        if not line:
            self._fail()
        return line.decode("utf-8", "replace").rstrip("\n")

    def _ask(self, sql, lines):
        self._send(sql)
        return [self._line() for _number in range(lines)]

    def _fail(self):
        child, self.child = self.child, None
        child.kill()
        raise PostgresError("counting rows in the dump's snapshot failed: %s"
                            % explain_client_error(child.stderr_text(), self.pg.where, self.pg.user, self.database,
                                                   self.pg.settings.label), step="count rows")


def json_pair(line):
    """``[schema, table]`` from a line of ROW_COUNT_TABLES_SQL's answer."""
    try:
        pair = json.loads(line)
    except ValueError:
        pair = None
    if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(item, str) for item in pair)):
        raise PostgresError("unexpected answer listing the tables to count: %r" % line[:200], step="count rows")
    return pair


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
