# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Point-in-time recovery (issue 18, item 4): ``quankey-backup restore --pitr --data-dir DIR``.

1. The target: ``--target-time`` (ISO 8601; naive is UTC), ``--target-lsn``, ``--target-name`` (a restore point) or
   none (the archive's end). The base backup: ``--backup NAME``, else the newest of the host that ended before the
   target (by time, or by its stop LSN), judged like every backup (signed metadata, its object's size).
2. Into an empty (or new) data directory only: the base backup streams through RestoreStream (download, SHA-256,
   authenticate, decrypt, decompress) into formats/basetar.py's TarChecker, whose sink (:class:`DataDirWriter`)
   writes each member as it passes, owned by the server's OS user; at the tar's end every file is checked against
   the manifest the tar carries and the manifest and WAL range against the signed metadata. Any failure removes
   what was written: nothing half-restored is left that looks like a data directory.
3. Recovery: ``recovery.signal`` and the recovery settings, given to the server on its command line (``-c``, so
   nothing of them persists in the data directory): restore_command is a small shell script in a private spool
   directory, and THIS process (:class:`WalFeeder`) answers it: it reads each WAL file PostgreSQL asks for with
   wal.py's ``read_archived`` (signed document, authenticated object, its name and host checked), several segments
   ahead in parallel, and hands it over in the spool (owned by the server's OS user, 0600). The keys never leave
   this process, the postgres OS user needs neither the engine nor its settings, and no interpreter starts per
   segment. A hole in the archive (a later segment is there) stops recovery with exit 128, naming the segment.
4. The server runs as the data directory's OS user (``--os-user``, default postgres when run as root), on a free
   port, on a private socket only (listen_addresses empty, a trust pg_hba for that socket), with hot_standby, until
   recovery reaches the target: it promotes (or pauses with ``--target-action pause``). Then the proof: it accepts
   connections, replay went past the base backup's end, the last replayed commit is not after a target time, every
   database answers. Promoted, it is stopped cleanly for its own service to start; paused, it keeps running and the
   result says how to reach it, resume or stop it.

Timelines: recovery_target_timeline is ``latest`` unless ``--target-timeline`` says otherwise, and the feeder serves
``.history`` files, so a restore after an earlier PITR follows the newest timeline and a promotion picks a timeline
no archive history holds.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import concurrent.futures
import ctypes
import datetime
import fcntl
import glob
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

from .. import keys
from ..adapters.postgres import find_bin_dir, parse_client_version
from ..catalog import layout, trust, walnames
from ..errors import BackupError, ConfigError, IntegrityError, NotFoundError, PostgresError, RefusedError, in_step
from ..formats import basetar
from ..progress import Progress, Stages
from . import basebackup, wal, wiring
from .backup import QueuedSink
from .restore import RestoreStream, decryptor_factory

LOG = logging.getLogger("quankey_backup")
TARGET_ACTIONS = ("promote", "pause")
DEFAULT_AHEAD = 8  # segments read ahead of recovery (WAL_PREFETCH when set)
DEFAULT_TIMEOUT = 6 * 3600  # seconds recovery may take before we give up on it (it keeps its state: run again)
LOG_NAME = "quankey-restore-pitr.log"  # the server's log of the recovery, in <data dir>/log
STOP_SIGNALS = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}  # pg_ctl stop -m
STOP_RECOVERY = 128  # restore_command's exit above 125: PostgreSQL stops recovery instead of ending it there
_LSN_RE = re.compile(r"\A[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}\Z")
_CONTROL_SETTINGS = (("max_connections setting", "max_connections"),
                     ("max_worker_processes setting", "max_worker_processes"),
                     ("max_wal_senders setting", "max_wal_senders"),
                     ("max_prepared_xacts setting", "max_prepared_transactions"),
                     ("max_locks_per_xact setting", "max_locks_per_transaction"))

FETCH_SCRIPT = """#!/bin/sh
# restore_command of `quankey-backup restore --pitr` (pid %(pid)d): that process reads WAL file $1 from the archive,
# checks and decrypts it, and leaves it here; this copies it to $2. Exit 1: not in the archive; %(stop)d: stop recovery.
spool='%(spool)s'
name=$1
case $name in ''|*/*|.*) echo "quankey-backup restore --pitr: bad WAL file name '$name'" >&2; exit %(stop)d;; esac
: > "$spool/ask/$name" || exit %(stop)d
while :; do
  if [ -f "$spool/ready/$name" ]; then
    cp "$spool/ready/$name" "$2.quankey" && mv -f "$2.quankey" "$2" && exit 0
    echo "quankey-backup restore --pitr: could not copy $name to $2" >&2
    exit %(stop)d
  fi
  [ -f "$spool/missing/$name" ] && exit 1
  if [ -f "$spool/failed/$name" ]; then
    cat "$spool/failed/$name" >&2
    exit %(stop)d
  fi
  if [ ! -f "$spool/alive" ] || [ ! -d /proc/%(pid)d ]; then
    # gone (killed, or it left a paused server): a timeline's history is "not archived", but a segment must
    # stop recovery, never end it early and promote a cluster short of its target
    case $name in *.history) exit 1;; esac
    echo "quankey-backup restore --pitr is no longer running: $name is not served; recovery stops here" >&2
    exit %(stop)d
  fi
  sleep 0.02
done
"""


# --------------------------------------------------------------------------- the target

class Target:
    """Where recovery stops: ``kind`` time, lsn, name or latest (the archive's end)."""

    def __init__(self, kind, value=None, inclusive=True, timeline="latest"):
        self.kind = kind
        self.value = value
        self.inclusive = inclusive
        self.timeline = timeline

    def describe(self):
        if self.kind == "latest":
            return "the end of the archive"
        if self.kind == "time":
            return "time %s" % self.value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return "%s %s" % (self.kind, self.value)

    def settings(self, action):
        """The recovery settings (``[(name, value)]``) PostgreSQL is started with."""
        found = [("recovery_target_timeline", self.timeline)]
        if self.kind == "time":
            found.append(("recovery_target_time", self.value.strftime("%Y-%m-%d %H:%M:%S.%f+00")))
        elif self.kind == "lsn":
            found.append(("recovery_target_lsn", self.value))
        elif self.kind == "name":
            found.append(("recovery_target_name", self.value))
        if self.kind != "latest":
            found += [("recovery_target_inclusive", "on" if self.inclusive else "off"),
                      ("recovery_target_action", action)]
        return found

    def summary(self):
        value = self.value.strftime("%Y-%m-%dT%H:%M:%S.%fZ") if self.kind == "time" else self.value
        return {"kind": self.kind, "value": value, "inclusive": self.inclusive, "timeline": self.timeline}


def parse_target(time_text=None, lsn=None, name=None, inclusive=True, timeline=None):
    """The :class:`Target` of restore's options; ConfigError for two targets, or one PostgreSQL would not take."""
    given = [flag for flag, value in (("--target-time", time_text), ("--target-lsn", lsn), ("--target-name", name))
             if value not in (None, "")]
    if len(given) > 1:
        raise ConfigError("%s: give one recovery target, not %d (none: recover to the end of the archive)"
                          % (" and ".join(given), len(given)))
    timeline = (timeline or "latest").strip()
    if timeline not in ("latest", "current") and not timeline.isdigit():
        raise ConfigError("--target-timeline %r: give latest (the default: follow the newest timeline), current (the "
                          "base backup's) or a timeline number" % timeline)
    if time_text:
        return Target("time", layout.parse_time(time_text, "--target-time"), inclusive, timeline)
    if lsn:
        if not _LSN_RE.match(lsn.strip()):
            raise ConfigError("--target-lsn %r is not a WAL location: give it as PostgreSQL prints one, e.g. 0/16B3748"
                              % lsn)
        return Target("lsn", lsn.strip().upper(), inclusive, timeline)
    if name:
        if len(name.encode("utf-8")) > 63 or "\n" in name:
            raise ConfigError("--target-name %r is not a restore point's name (at most 63 bytes, as "
                              "pg_create_restore_point made it)" % name)
        return Target("name", name, inclusive, timeline)
    return Target("latest", None, inclusive, timeline)


def ended_at(record):
    """When a base backup was done (its start plus its duration, an upper bound): recovery can stop no earlier."""
    return record.timestamp + datetime.timedelta(seconds=float(record.metadata.get("duration_seconds") or 0))


def choose_base(records, target, load=None):
    """The newest of ``records`` (newest first) recovery can reach ``target`` from; NotFoundError says which one is
    the oldest when the target lies before them all. ``load(record)`` loads a record's metadata when it is first
    needed (None: loaded already): newest first, a host with many base backups reads only those it looks at."""
    load = load or (lambda record: record)
    if not records:
        raise NotFoundError("no base backups: take one with `quankey-backup basebackup`", step="select")
    if target.kind == "time":
        for record in records:
            load(record)
            if ended_at(record) <= target.value:
                return record
        oldest = records[-1]
        ended = ended_at(oldest).strftime("%Y-%m-%dT%H:%M:%SZ")
        raise NotFoundError("no base backup ended before %s: the oldest, %s, ended at %s; recover to a later time, or "
                            "from another copy of the archive" % (target.describe(), oldest.basename, ended), step="select")
    if target.kind == "lsn":
        wanted = basetar.lsn_value(target.value)
        for record in records:
            load(record)
            if basetar.lsn_value(record.metadata["stop_lsn"]) <= wanted:
                return record
        raise NotFoundError("no base backup ended before %s: the oldest, %s, ends at %s"
                            % (target.describe(), records[-1].basename, records[-1].metadata["stop_lsn"]), step="select")
    return records[0]  # a restore point's place is not known before recovery: the newest (--backup picks another)


# --------------------------------------------------------------------------- the data directory

class DataDirWriter:
    """TarChecker's sink: writes each member of a base backup under ``root`` (members' paths are already checked
    to stay inside it), directories 0700 and files 0600, owned by ``uid``/``gid`` when given."""

    def __init__(self, root, owner=None):
        self.root = root
        self.owner = owner
        self.files = 0
        self.bytes = 0
        self._handle = None

    def _path(self, path):
        return os.path.join(self.root, *path.split("/"))

    def _own(self, fd_or_path):
        if self.owner is not None:
            if isinstance(fd_or_path, int):
                os.fchown(fd_or_path, *self.owner)
            else:
                os.chown(fd_or_path, *self.owner, follow_symlinks=False)

    def _directory(self, target):
        if not os.path.isdir(target):
            os.mkdir(target, 0o700)
            self._own(target)

    def begin(self, path, kind):
        target = self._path(path)
        parent = os.path.dirname(target)
        if parent != self.root and not os.path.isdir(parent):
            self.begin(os.path.dirname(path), basetar.DIRECTORY)
        if kind == basetar.DIRECTORY or (kind == basetar.SYMLINK and path == "pg_wal"):
            self._directory(target)  # a pg_wal linked elsewhere on the source becomes a directory here
            return
        if kind not in basetar.REGULAR:
            raise IntegrityError("the base backup holds %s as a link, which restore --pitr does not write (base backups "
                                 "of clusters with tablespaces are refused when taken)" % path, step="extract")
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        self._own(fd)
        self._handle = os.fdopen(fd, "wb")
        self.files += 1

    def data(self, chunk):
        self._handle.write(chunk)
        self.bytes += len(chunk)

    def end(self):
        if self._handle is not None:
            self._handle.flush()
            _start_writeback(self._handle.fileno())
            self._handle.close()
            self._handle = None

    def close(self):
        self.end()


def check_data_dir(path):
    """The absolute data directory; RefusedError unless it is missing (its parent exists) or an empty directory."""
    if not path:
        raise ConfigError("restore --pitr needs --data-dir: the new (or empty) directory the cluster is restored into")
    path = os.path.abspath(path)
    if os.path.lexists(path):
        if not os.path.isdir(path) or os.path.islink(path):
            raise RefusedError("--data-dir %s exists and is not a directory: give a new or empty directory" % path)
        held = sorted(os.listdir(path))
        if held:
            raise RefusedError("--data-dir %s is not empty (it holds %s%s): restore --pitr never writes over a data "
                               "directory; give a new or empty one (move this one aside first if it is the one to "
                               "replace)" % (path, ", ".join(held[:5]), " and %d more" % (len(held) - 5)
                                             if len(held) > 5 else ""))
    elif not os.path.isdir(os.path.dirname(path)):
        raise ConfigError("--data-dir %s: its parent directory %s does not exist" % (path, os.path.dirname(path)))
    return path


def os_user_of(name):
    """``(name, uid, gid)`` of the OS user the server runs as: ``name``, else postgres as root, else ourselves."""
    if not name:
        if os.geteuid() != 0:
            entry = pwd.getpwuid(os.geteuid())
            return entry.pw_name, None, None  # files are ours already; nothing to change owner
        name = "postgres"
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise ConfigError("--os-user %s: no such OS user here; give the user PostgreSQL runs as" % name)
    if os.geteuid() != 0:
        if entry.pw_uid != os.geteuid():
            raise ConfigError("--os-user %s: only root can restore a cluster for another OS user; run as root or as %s"
                              % (name, name))
        return entry.pw_name, None, None
    if entry.pw_uid == 0:
        raise ConfigError("--os-user root: PostgreSQL refuses to run as root; give the user it runs as (postgres)")
    return entry.pw_name, entry.pw_uid, entry.pw_gid


def _claim(data_dir):
    """An exclusive flock(2) on the data directory, held until the restore is over (the kernel drops it when the
    process dies); RefusedError when another restore holds it, or wrote into the directory before this one got it."""
    fd = os.open(data_dir, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        check_data_dir(data_dir)  # still empty now that it is ours
    except (BlockingIOError, RefusedError) as exc:
        os.close(fd)
        raise RefusedError("--data-dir %s is being restored into by another run (or was since this one checked it): "
                           "wait for it, or give another directory (%s)" % (data_dir, exc))
    return fd


def _wipe(path, created):
    """Remove what a failed restore wrote: the directory's contents (it was empty), or the directory we created."""
    if created:
        shutil.rmtree(path, ignore_errors=True)
        return
    for name in os.listdir(path):
        full = os.path.join(path, name)
        if os.path.isdir(full) and not os.path.islink(full):
            shutil.rmtree(full, ignore_errors=True)
        else:
            try:
                os.unlink(full)
            except OSError:
                pass


# --------------------------------------------------------------------------- the server

class Server:
    """The restored cluster's server, run by pg_ctl as its OS user on a private socket."""

    def __init__(self, bin_dir, data_dir, user, owner, socket_dir, port):
        self.bin_dir = bin_dir
        self.data_dir = data_dir
        self.user = user
        self.owner = owner
        self.socket_dir = socket_dir
        self.port = port
        self.log_path = os.path.join(data_dir, "log", LOG_NAME)
        self.db_user = None

    def _as_owner(self, argv):
        return ["runuser", "-u", self.user, "--"] + argv if self.owner is not None else argv

    def tool(self, name, *args, **kwargs):
        argv = self._as_owner([os.path.join(self.bin_dir, name)] + list(args))
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}
        return subprocess.run(argv, env=env, cwd=self.data_dir, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,  # pylint: disable=ansible-bad-function
                              stderr=subprocess.PIPE, universal_newlines=True, check=False,
                              timeout=kwargs.get("timeout", 600), start_new_session=True)

    def start(self, settings):
        """pg_ctl start, not waiting (recovery may take long): ``settings`` ``[(name, value)]`` on its command line."""
        options = " ".join("-c %s" % _shell_quote("%s=%s" % (name, value)) for name, value in settings)
        log_dir = os.path.dirname(self.log_path)
        if not os.path.isdir(log_dir):
            os.mkdir(log_dir, 0o700)
            if self.owner is not None:
                os.chown(log_dir, *self.owner)
        done = self.tool("pg_ctl", "start", "-W", "-D", self.data_dir, "-l", self.log_path, "-o",
                         "-p %d %s" % (self.port, options))
        if done.returncode != 0:
            raise PostgresError("pg_ctl could not start the restored cluster (exit %d): %s %s"
                                % (done.returncode, done.stderr.strip(), self.log_tail()), step="recover")

    def _pid(self):
        """The postmaster's pid from postmaster.pid, or None (no file: not running, or gone)."""
        try:
            with open(os.path.join(self.data_dir, "postmaster.pid"), "r", encoding="ascii", errors="replace") as handle:
                pid = int(handle.readline().strip() or "0")
        except (OSError, ValueError):
            return None
        return pid if pid > 0 else None

    def alive(self):
        """Whether the postmaster of postmaster.pid is alive (no child process: it is polled often)."""
        pid = self._pid()
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def running(self):
        """Whether the postmaster is alive (pg_ctl status)."""
        return self.tool("pg_ctl", "status", "-D", self.data_dir, timeout=60).returncode == 0

    def stop(self, mode="fast", timeout=300):
        """Stop the server (``mode`` as pg_ctl's -m) and wait until it is gone; whether it stopped. The signal pg_ctl
        would send, sent here, and its end watched every 10 ms (pg_ctl -w looks every 100 ms: ~50 ms more per
        restore); pg_ctl itself where this process may not signal the server."""
        pid = self._pid()
        if pid is not None:
            try:
                os.kill(pid, STOP_SIGNALS[mode])
            except PermissionError:
                pid = None
            except ProcessLookupError:
                return True
        if pid is None:
            done = self.tool("pg_ctl", "stop", "-D", self.data_dir, "-m", mode, "-w", "-t", str(timeout))
            return done.returncode == 0
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not os.path.exists(os.path.join(self.data_dir, "postmaster.pid")):
                return True  # the postmaster removes it last, as it exits
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            time.sleep(0.01)
        return False

    def query(self, sql, database="postgres"):
        """One query (or a list of them, in one session) over the private socket (trust for it alone); the rows of
        all, in order, as lists of text, or raises."""
        argv = [os.path.join(self.bin_dir, "psql"), "-X", "-q", "-A", "-t", "-F", "\t", "-v", "ON_ERROR_STOP=1",
                "-h", self.socket_dir, "-p", str(self.port), "-U", self.db_user or self.user, "-d", database]
        for one in [sql] if isinstance(sql, str) else sql:
            argv += ["-c", one]
        done = subprocess.run(argv, env={"PATH": "/usr/bin:/bin", "LC_ALL": "C", "PGCONNECT_TIMEOUT": "5"},  # pylint: disable=ansible-bad-function
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True, check=False, timeout=120)
        if done.returncode != 0:
            raise PostgresError("the restored cluster answered %r with: %s" % (sql, done.stderr.strip()), step="check")
        return [line.split("\t") for line in done.stdout.splitlines() if line]

    def log_tail(self, lines=12):
        try:
            with open(self.log_path, "r", encoding="utf-8", errors="replace") as handle:
                kept = handle.read().splitlines()[-lines:]
        except OSError:
            return ""
        return "(the server's log, %s, ends: %s)" % (self.log_path, " | ".join(line.strip() for line in kept))

    def log_lines(self, *needles):
        try:
            with open(self.log_path, "r", encoding="utf-8", errors="replace") as handle:
                return [line.strip() for line in handle if any(needle in line for needle in needles)]
        except OSError:
            return []


def _shell_quote(text):
    return "'" + text.replace("'", "'\"'\"'") + "'"


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def server_bin_dir(settings, major):
    """The bin directory of PostgreSQL ``major``'s server (pg_ctl, postgres); ConfigError when it is not here."""
    candidates = []
    if settings.pg_bin_dir:
        candidates.append(settings.pg_bin_dir)
    candidates.append("/usr/lib/postgresql/%s/bin" % major)
    try:
        candidates.append(find_bin_dir(None))
    except ConfigError:
        pass
    for directory in candidates:
        postgres = os.path.join(directory, "postgres")
        if not (os.path.isfile(postgres) and os.path.isfile(os.path.join(directory, "pg_ctl"))):
            continue
        done = subprocess.run([postgres, "--version"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,  # pylint: disable=ansible-bad-function
                              universal_newlines=True, check=False, timeout=60)
        if done.returncode == 0 and str(parse_client_version(done.stdout)[0]) == str(major):
            return directory
    raise ConfigError("the base backup is of PostgreSQL %s, whose server (postgres, pg_ctl) is not here (looked in %s): "
                      "install postgresql-%s, or set %s to its bin directory"
                      % (major, ", ".join(candidates), major, settings.label("pg_bin_dir")))


# --------------------------------------------------------------------------- the WAL feeder

class WalFeeder:
    """Answers the spool's restore_command script from the archive, in a thread of this process.

    ``ask/<name>``: the script asks; this reads it (read ahead for segments) and writes ``ready/<name>`` (0600, owned
    by the server's OS user), ``missing/<name>`` (not archived: the script exits 1) or ``failed/<name>`` (its text on
    the server's log; the script exits 128 and recovery stops). ``alive`` exists while the feeder runs.
    """

    def __init__(self, settings, store, context, host, spool, owner, ahead, warm=None):
        self.settings = settings
        self.store = store
        self.context = context
        self.host = host
        self.spool = spool
        self.owner = owner
        self.ahead = ahead
        self.served = []
        self.missing = []
        self.failure = None
        self._futures = dict(warm or {})  # {name: future of wal.prefetch_one} read before the feeder began
        self._stop = threading.Event()
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, ahead))
        self._thread = threading.Thread(target=self._loop, name="wal-feeder")
        self._thread.daemon = True
        for name in ("ask", "ready", "missing", "failed"):
            os.mkdir(os.path.join(spool, name), 0o700)
            self._own(os.path.join(spool, name))
        self.script = os.path.join(spool, "restore_command.sh")
        with open(self.script, "w", encoding="utf-8") as handle:
            handle.write(FETCH_SCRIPT % {"pid": os.getpid(), "spool": spool.replace("'", "'\\''"), "stop": STOP_RECOVERY})
        os.chmod(self.script, 0o500)
        self._own(self.script)

    def _own(self, path):
        if self.owner is not None:
            os.chown(path, *self.owner)

    def restore_command(self):
        return "/bin/sh %s %%f %%p" % _shell_quote(self.script)

    def start(self):
        self._answer_file("alive", b"")
        self._thread.start()

    def stop_answering(self):
        """The script answers not-found from now on for what it was not given."""
        try:
            os.unlink(os.path.join(self.spool, "alive"))
        except OSError:
            pass

    def stop(self):
        """Stop answering; the script then answers not-found for what it was not given."""
        self.stop_answering()
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30)
        self._pool.shutdown(wait=False)

    def _answer_file(self, relative, data):
        path = os.path.join(self.spool, relative)
        temporary = path + ".part"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            if self.owner is not None:
                os.fchown(handle.fileno(), *self.owner)
            handle.write(data)
        os.replace(temporary, path)

    def _loop(self):
        ask = os.path.join(self.spool, "ask")
        while not self._stop.is_set():
            try:
                names = sorted(os.listdir(ask))
            except OSError:
                names = []
            if not names:
                self._stop.wait(0.01)
                continue
            for name in names:
                try:
                    os.unlink(os.path.join(ask, name))
                except OSError:
                    pass
                try:
                    self._answer(name)
                except Exception as exc:  # pylint: disable=broad-except  # recovery must hear of it, not wait forever
                    LOG.exception("restore --pitr: answering %s failed", name)
                    try:
                        self._fail(name, "serving %s failed unexpectedly: %s" % (name, exc))
                    except Exception:  # pylint: disable=broad-except
                        self.stop_answering()

    def _submit(self, name):
        if name not in self._futures:
            self._futures[name] = self._pool.submit(wal.prefetch_one, self.settings, self.context, self.store,
                                                    self.host, name)

    def _answer(self, name):
        for kind in ("ready", "missing", "failed"):
            if os.path.exists(os.path.join(self.spool, kind, name)):
                return  # asked again: answered already
        try:
            parsed = walnames.parse(name, "the WAL file recovery asked for")
        except ConfigError as exc:
            self._fail(name, str(exc))
            return
        if parsed.is_segment:
            self._forget_before(parsed)
            for later in walnames.following(name, self.ahead):
                self._submit(later)
        data = None
        future = self._futures.pop(name, None)
        if future is not None:
            try:
                data = future.result()
            except Exception:  # pylint: disable=broad-except  # read again below, failing loudly
                data = None
        if data is None:
            try:
                _key, data = wal.read_archived(self.settings, self.store, self.context, self.host, parsed)
            except wal.NotArchivedError:
                self.missing.append(name)
                self._answer_file(os.path.join("missing", name), b"")
                return
            except BackupError as exc:
                self._fail(name, exc.message if hasattr(exc, "message") else str(exc))
                return
            except Exception as exc:  # pylint: disable=broad-except  # recovery must stop, not take it for the end
                self._fail(name, "reading %s failed unexpectedly: %s" % (name, exc))
                return
        self._answer_file(os.path.join("ready", name), data)
        self.served.append(name)

    def _fail(self, name, message):
        text = "quankey-backup restore --pitr: %s" % message
        if self.failure is None:
            self.failure = (name, message)
        LOG.error("restore --pitr: WAL %s: %s", name, message)
        self._answer_file(os.path.join("failed", name), (text + "\n").encode("utf-8"))

    def _forget_before(self, parsed):
        """Drop segments recovery has gone past: their futures, and their files in ready/."""
        for other in list(self._futures):
            if len(other) == 24 and other[:8] == parsed.timeline and other < parsed.name:
                self._futures.pop(other).cancel()
        wal.forget_older(os.path.join(self.spool, "ready"), parsed)

    def keep_history_files(self):
        """Before this process leaves a paused server: put every archived ``.history`` file of the host in ready/,
        so that a later promotion still picks a timeline the archive does not hold."""
        for timeline in range(1, 1000):
            name = "%08X.history" % timeline
            if os.path.exists(os.path.join(self.spool, "ready", name)):
                continue
            try:
                _key, data = wal.read_archived(self.settings, self.store, self.context, self.host, walnames.parse(name))
            except NotFoundError:
                if timeline > 1:
                    break
                continue
            self._answer_file(os.path.join("ready", name), data)


def warm_names(metadata, ahead):
    """The segments :func:`warm_start` reads: the base backup's own (``start_wal_file`` to the one holding
    ``stop_lsn``), which recovery needs before anything else whatever the target, at most ``ahead`` of them; []
    when the metadata does not say (16 MiB segments assumed, as the feeder's read-ahead assumes them)."""
    first = metadata.get("start_wal_file")
    if not first or ahead <= 0:
        return []
    try:
        timeline, number = walnames.segment_number(first)
        last = (basetar.lsn_value(metadata["stop_lsn"]) - 1) // walnames.DEFAULT_SEGMENT_SIZE
    except (KeyError, ValueError):
        return [first]
    count = max(0, min(last - number, ahead - 1))
    return [first] + [walnames.segment_name(timeline, number + step) for step in range(1, count + 1)]


def warm_start(settings, store, context, host, record, ahead):
    """Begin reading the WAL recovery asks for first, while the base backup downloads: ``{name: future}`` of
    :func:`warm_names`, for :class:`WalFeeder`. Later segments are left to the feeder's read-ahead, which runs
    beside the server's replay: a download keeps both cores of a small host busy, and reading a target's worth of
    WAL beside it slowed a 67 MB restore's files stage from ~0.8 s to ~1.7 s (bench/analysis.md). A guess, as the
    read-ahead is: what recovery never asks for is dropped, what could not be read is read again (loudly)."""
    names = warm_names(record.metadata, ahead)
    if not names:
        return {}
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=min(2, len(names)), thread_name_prefix="wal-warm")
    try:
        return {name: pool.submit(wal.prefetch_one, settings, context, store, host, name) for name in names}
    finally:
        pool.shutdown(wait=False)  # the reads go on; their threads end with them


# --------------------------------------------------------------------------- the restore

def run_restore_pitr(settings, data_dir, *, target=None, backup=None, host=None, action="promote", os_user=None,
                     archive=True, store=None, progress=None, allow_unsigned=False, timeout=DEFAULT_TIMEOUT, ahead=None,
                     config_file=None):
    """Restore host ``host``'s cluster (default this host's) into ``data_dir`` and recover it to ``target`` (a
    :class:`Target`; None: the archive's end); returns a summary dict, or raises having removed what it wrote (a
    recovery that failed after the server started leaves the data directory and its log, and says so)."""
    progress = progress if progress is not None else Progress("restore")
    stages = Stages(progress)
    target = target or Target("latest")
    started_at = layout.utcnow()
    with stages("prepare"):
        ready = _prepare(settings, data_dir, target, backup, host, action, os_user, store, allow_unsigned)
        data_dir, user, owner, store, context, host = (ready["data_dir"], ready["user"], ready["owner"], ready["store"],
                                                       ready["context"], ready["host"])
        record, new_decryptor, major, bin_dir = ready["record"], ready["new_decryptor"], ready["major"], ready["bin_dir"]
        LOG.info("restore --pitr: base backup %s of host %s (WAL %s to %s, timeline %d) into %s, then recovery to %s",
                 record.basename, host, record.metadata["start_lsn"], record.metadata["stop_lsn"],
                 record.metadata["timeline"], data_dir, target.describe())
    created = not os.path.exists(data_dir)
    if created:
        os.mkdir(data_dir, 0o700)
    claim = _claim(data_dir)
    count = settings.wal_prefetch if ahead is None else ahead
    count = count if count else DEFAULT_AHEAD
    warm = {}  # two restores racing into one empty directory: the second is refused
    try:
        if owner is not None:
            os.chown(data_dir, *owner)
        os.chmod(data_dir, 0o700)
        if owner is not None and not _reachable(data_dir, user):
            _wipe(data_dir, created)
            raise ConfigError("the OS user %s cannot reach --data-dir %s: every parent directory must let it enter (chmod "
                              "o+x, or pick a directory under one it may enter, such as /var/lib/postgresql)"
                              % (user, data_dir))
        try:
            with stages("download_extract", total=record.metadata["size_bytes"]):
                warm = warm_start(settings, store, context, host, record, count)
                writer = QueuedSink(DataDirWriter(data_dir, owner))
                checker = basetar.TarChecker(sink=writer)
                checking = QueuedSink(checker, depth=8, methods=("feed",), name="manifest-check")
                try:
                    with RestoreStream(store, record, new_decryptor, progress) as stream:
                        counts = stream.run(checking)
                    checking.close()  # every byte checked, or the check's failure raised
                    checked = in_step("extract", checker.finish)
                    writer.close()  # every file written, or its failure raised
                finally:
                    checking.close(quiet=True)
                    writer.close(quiet=True)
                basebackup.check_against_metadata(record, counts, checked, step="extract")
                _fsync_tree(data_dir)
        except BaseException:
            for future in warm.values():
                future.cancel()
            _wipe(data_dir, created)
            raise
        spool = socket_dir = server = feeder = None
        leave_running = False
        try:
            with stages("recover"):
                spool = tempfile.mkdtemp(prefix=".quankey-pitr-", dir=os.path.dirname(data_dir))
                socket_dir = tempfile.mkdtemp(prefix="quankey-pitr-sock-")  # short: a socket's path has ~100 bytes
                for path in (spool, socket_dir):
                    os.chmod(path, 0o700)
                    if owner is not None:
                        os.chown(path, *owner)
                server = Server(bin_dir, data_dir, user, owner, socket_dir, _free_port())
                server.db_user = settings.db_user or user
                feeder = WalFeeder(settings, store, context, host, spool, owner, count, warm)
                options = _recovery_options(server, spool, owner, feeder, target, action, archive,
                                            _configuration(data_dir, config_file, major), major)
                _touch(os.path.join(data_dir, "recovery.signal"), owner)
                feeder.start()
                server.start(options)
                reached = _wait_for_recovery(server, feeder, target, action, timeout)
            with stages("check"):
                proof = _prove(server, record, target, action)
                if action == "pause":
                    feeder.keep_history_files()
                    leave_running = True
                elif not server.stop():
                    raise PostgresError("the restored cluster did not stop cleanly after recovery %s" % server.log_tail(),
                                        step="check")
        except BaseException:
            if server is not None and server.running():
                server.stop("immediate")
            raise
        finally:
            if feeder is not None:
                feeder.stop()
            if not leave_running:
                for path in (spool, socket_dir):
                    if path:
                        shutil.rmtree(path, ignore_errors=True)
        result = {
            "kind": "pitr", "data_dir": data_dir, "host": ready["host"], "base_backup": record.basename,
            "base_timestamp": record.timestamp.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "base_start_lsn": record.metadata["start_lsn"], "base_stop_lsn": record.metadata["stop_lsn"],
            "base_timeline": record.metadata["timeline"], "system_identifier": record.metadata["system_identifier"],
            "server_version": record.metadata["server_version"], "files": checked["manifest"]["files"],
            "manifest_ok": True, "signature": record.verdict.describe(), "trusted": record.verdict.trusted,
            "target": target.summary(), "target_action": action, "reached": reached, "os_user": user,
            "wal_files_restored": len(feeder.served), "wal_not_archived": feeder.missing[-3:],
            "archiving": "on" if archive else "off", "running": leave_running, "log": server.log_path,
            "started": started_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "duration_seconds": stages.elapsed(), "stage_seconds": stages.result(),
            "prepare_seconds": ready["seconds"],
        }
        result.update(proof)
        if leave_running:
            result["connect"] = "psql -h %s -p %d -U %s" % (socket_dir, server.port, server.db_user)
            result["socket_dir"], result["port"], result["spool_dir"] = socket_dir, server.port, spool
        return result
    finally:
        os.close(claim)


def plan_restore_pitr(settings, data_dir, *, target=None, backup=None, host=None, action="promote", os_user=None,
                      store=None, allow_unsigned=False):
    """What :func:`run_restore_pitr` would do, writing nothing (the module's check mode): the same checks of its
    prepare stage, in the same order (the data directory new or empty, the OS user, the base backup chosen for
    ``target`` and its metadata's trust, its data key opened with the keys held, the server's programs of its major
    version); raises where it would."""
    target = target or Target("latest")
    ready = _prepare(settings, data_dir, target, backup, host, action, os_user, store, allow_unsigned)
    data_dir, record = ready["data_dir"], ready["record"]
    return {"kind": "pitr", "data_dir": data_dir, "data_dir_state": "empty" if os.path.isdir(data_dir) else "missing",
            "host": ready["host"], "base_backup": record.basename,
            "base_timestamp": record.timestamp.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "base_start_lsn": record.metadata["start_lsn"], "base_stop_lsn": record.metadata["stop_lsn"],
            "base_timeline": record.metadata["timeline"], "server_version": record.metadata["server_version"],
            "size_bytes": record.metadata["size_bytes"], "signature": record.verdict.describe(),
            "trusted": record.verdict.trusted, "target": target.summary(), "target_description": target.describe(),
            "target_action": action, "os_user": ready["user"], "bin_dir": ready["bin_dir"]}


def _prepare(settings, data_dir, target, backup, host, action, os_user, store, allow_unsigned):
    """The checks before anything is written, for the restore and its plan alike: the target action, the data
    directory new or empty, the OS user, the base backup chosen for ``target`` and its metadata's trust, its data key
    opened with the keys held (WrongKeyError when not), the server's programs of its major version."""
    if action not in TARGET_ACTIONS:
        raise ConfigError("--target-action %r: give promote or pause" % action)
    parts, began = {}, time.monotonic()

    def lap(name):
        nonlocal began
        now = time.monotonic()
        parts[name] = round(now - began, 3)
        began = now

    data_dir = check_data_dir(data_dir)
    user, uid, gid = os_user_of(os_user)
    lap("data_dir")
    store = wiring.store_or_open(settings, store)
    context = keys.KeyContext(settings)
    host = host or settings.host
    lap("store")
    record = _select(settings, store, context, backup, host, target)
    trust.require(record.verdict, allow_unsigned)
    lap("select")
    new_decryptor = decryptor_factory(context, store, record)
    lap("data_key")
    major = record.metadata["server_version"].split(".")[0]
    bin_dir = server_bin_dir(settings, major)
    lap("server_programs")
    return {"data_dir": data_dir, "user": user, "owner": (uid, gid) if uid is not None else None, "store": store,
            "context": context, "host": host, "record": record, "new_decryptor": new_decryptor, "major": major,
            "bin_dir": bin_dir, "seconds": parts}


def _select(settings, store, context, backup, host, target):
    if backup:
        return basebackup.select_base(settings, store, backup, host, context=context)
    records, _orphans = basebackup.list_base_backups(settings, store, host)
    if not records:
        raise NotFoundError("no base backups of host %s in %s: take one with `quankey-backup basebackup`"
                            % (host, store.url(layout.base_prefix(settings.prefix, host))), step="select")
    chosen = choose_base(records, target, load=lambda record: basebackup.load_metadata(store, record))
    return basebackup.select_base(settings, store, chosen.basename, host, context=context, records=records)


def _configuration(data_dir, config_file, major):
    """The postgresql.conf the recovery runs with: None for the data directory's own; else ``config_file``, else the
    one cluster's of this major version in Debian's /etc/postgresql/<major>/ (its settings: shared memory, memory,
    extensions), else "" (none: an empty one)."""
    if config_file:
        if not os.path.isfile(config_file):
            raise ConfigError("--config-file %s does not exist: give the restored cluster's postgresql.conf" % config_file)
        return os.path.abspath(config_file)
    if os.path.exists(os.path.join(data_dir, "postgresql.conf")):
        return None
    found = sorted(glob.glob("/etc/postgresql/%s/*/postgresql.conf" % major))
    if len(found) == 1:
        LOG.info("restore --pitr: the base backup's data directory has no postgresql.conf: recovering with %s (its "
                 "data_directory, port, sockets, pid file and pg_hba replaced for the recovery)", found[0])
        return found[0]
    if found:
        LOG.warning("restore --pitr: the data directory has no postgresql.conf and %s hold several clusters' (%s): "
                    "recovering with PostgreSQL's defaults; give --config-file to use one", os.path.dirname(
                        os.path.dirname(found[0])), ", ".join(found))
    return ""


def _recovery_options(server, spool, owner, feeder, target, action, archive, config=None, major=None):
    """The server's command-line settings for recovery: the target, restore_command, a private socket with a trust
    pg_hba for it alone, and, when the data directory has no configuration of its own (Debian keeps it in /etc),
    ``config`` (another cluster's postgresql.conf, its data directory and pid file replaced) or an empty one with
    pg_control's settings a hot standby must match. PostgreSQL 14 and later, where :func:`_fsync_tree` could use
    syncfs(2): the server's own flush of the data directory at its start is one syncfs too (its default, a fsync of
    each file, costs about a second for a few thousand files here, after we flushed them all)."""
    hba = _spool_file(spool, "pg_hba.conf", owner, "# restore --pitr: the recovering server takes connections on its "
                      "private socket only\nlocal all all trust\n")
    options = [("listen_addresses", ""), ("unix_socket_directories", server.socket_dir), ("hba_file", hba),
               ("hot_standby", "on"), ("restore_command", feeder.restore_command())]
    if config:
        ident = _spool_file(spool, "pg_ident.conf", owner, "# restore --pitr: no user name maps while recovering\n")
        options += [("config_file", config), ("data_directory", server.data_dir), ("external_pid_file", ""),
                    ("ident_file", ident), ("cluster_name", "quankey-restore-pitr")]
    elif config is not None:  # "": none of its own, and none found in /etc
        options.append(("config_file", _spool_file(spool, "postgresql.conf", owner, "# restore --pitr: the base "
                                                   "backup's cluster keeps its configuration outside its data directory\n")))
        options += _control_settings(server)
    if not archive:
        options.append(("archive_mode", "off"))
    if major and str(major).isdigit() and int(major) >= 14 and _libc_function("syncfs") is not None:
        options.append(("recovery_init_sync_method", "syncfs"))
    return options + target.settings(action)


def _spool_file(spool, name, owner, text):
    """Write a small file of the recovery into the spool, owned by the server's OS user; its path."""
    path = os.path.join(spool, name)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    if owner is not None:
        os.chown(path, *owner)
    return path


def _control_settings(server):
    done = server.tool("pg_controldata", "-D", server.data_dir, timeout=60)
    found = []
    for line in done.stdout.splitlines():
        label, _sep, value = line.partition(":")
        for wanted, setting in _CONTROL_SETTINGS:
            if label.strip() == wanted and value.strip().isdigit():
                found.append((setting, value.strip()))
    return found


def _wait_for_recovery(server, feeder, target, action, timeout):
    """Until the server promoted (or paused at the target); what it reached. PostgresError (or the feeder's
    IntegrityError naming the WAL file) when the server stopped instead, or took longer than ``timeout``."""
    began = last_note = next_query = time.monotonic()
    deadline = began + timeout
    seen = False
    # The end of recovery removes recovery.signal just before the promotion: a stat every 20 ms sees it, where a
    # query (a psql process) every 0.1 s (0.3 s after 5 s) would see the promotion ~50 ms later on average.
    signal_file = os.path.join(server.data_dir, "recovery.signal") if os.access(server.data_dir, os.X_OK) else None
    while time.monotonic() < deadline:
        time.sleep(0.02 if time.monotonic() - began < 5 else 0.3)  # a small cluster recovers in about a second
        if server.alive():
            seen = True
        elif seen or time.monotonic() - began > 10 or server.log_lines("database system is shut down"):
            # pg_ctl -W returns before the postmaster writes its pid file; a quick failure may beat our first look
            _recovery_failed(server, feeder, target)
        else:
            continue
        now = time.monotonic()
        if now < next_query and (signal_file is None or os.path.exists(signal_file)):
            continue
        next_query = now + (0.1 if now - began < 5 else 0.3)
        try:
            rows = server.query("SELECT pg_is_in_recovery(), CASE WHEN pg_is_in_recovery() THEN "
                                "pg_get_wal_replay_pause_state() ELSE '' END, coalesce(pg_last_wal_replay_lsn()::text, '')")
        except PostgresError as exc:
            if "role" in str(exc) and "does not exist" in str(exc):  # it answers: waiting would never end
                raise PostgresError("the restored server takes connections, but not as role %r, which does not exist "
                                    "in the restored cluster: set DB_USER to one of its superuser roles (its bootstrap "
                                    "superuser, often postgres) and restore again into an empty directory. Nothing was "
                                    "promoted; the data directory %s is left for inspection (delete it before "
                                    "restoring there again)" % (server.db_user, server.data_dir), step="recover")
            continue  # not consistent yet: the server takes no connections until then
        in_recovery, paused, lsn = rows[0]
        if in_recovery == "f":
            return {"state": "promoted", "replay_lsn": lsn}
        if action == "pause" and paused == "paused":
            return {"state": "paused", "replay_lsn": lsn}
        if time.monotonic() - last_note > 30:
            LOG.info("restore --pitr: recovering, replayed to %s, %d WAL files so far", lsn, len(feeder.served))
            last_note = time.monotonic()
    raise PostgresError("recovery did not reach %s within %d s (%d WAL files restored): the server is stopped and the "
                        "data directory %s kept as it is; run again with a longer --timeout %s"
                        % (target.describe(), timeout, len(feeder.served), server.data_dir, server.log_tail()),
                        step="recover")


def _recovery_failed(server, feeder, target):
    """The server stopped during recovery: say why, from the feeder and the server's log."""
    if feeder.failure is not None:
        name, message = feeder.failure
        raise IntegrityError("recovery stopped at WAL file %s: %s. Nothing was promoted; the partly recovered data "
                             "directory %s is left for inspection (delete it before restoring there again) %s"
                             % (name, message, server.data_dir, server.log_tail(6)), step="recover")
    fatal = server.log_lines("FATAL", "PANIC")
    last_missing = feeder.missing[-1] if feeder.missing else None
    hint = ""
    if any("before configured recovery target" in line for line in fatal):
        hint = (": the archive ends before %s (the last WAL file asked for and not archived: %s); recover to an "
                "earlier target, or check that archiving works (health's wal rule)" % (target.describe(), last_missing))
    elif any("recovery stop point is before consistent" in line for line in fatal):
        hint = ": %s is before the base backup's end; pick an older base backup with --backup" % target.describe()
    raise PostgresError("the restored server stopped during recovery%s. Nothing was promoted; the data directory %s "
                        "is left for inspection (delete it before restoring there again): %s %s"
                        % (hint, server.data_dir, " | ".join(fatal[-3:]) or "no FATAL line", server.log_tail(6)),
                        step="recover")


def _prove(server, record, target, action):
    """What shows the restored cluster consistent: replay past the base backup's end, the target respected (a time
    target: no commit replayed after it), every database answering a catalog query."""
    rows = server.query([  # one psql: each is a process, and the restore waits for this one
        "SELECT pg_is_in_recovery(), coalesce(pg_last_wal_replay_lsn()::text, ''), "
        "coalesce(to_char(pg_last_xact_replay_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), ''), "
        "CASE WHEN has_function_privilege('pg_control_checkpoint()', 'EXECUTE') "  # a DB_USER without pg_monitor
        "THEN (SELECT timeline_id FROM pg_control_checkpoint())::text ELSE '' END",
        "SELECT datname FROM pg_database WHERE datallowconn ORDER BY 1"])
    in_recovery, replay_lsn, last_commit, timeline = rows[0]
    databases = [row[0] for row in rows[1:]]
    if action == "promote" and in_recovery != "f":
        raise PostgresError("the restored cluster is still in recovery after it said it promoted", step="check")
    stop = record.metadata["stop_lsn"]
    if replay_lsn and basetar.lsn_value(replay_lsn) < basetar.lsn_value(stop):
        raise IntegrityError("recovery replayed to %s only, before the base backup's end %s: the cluster is not "
                             "consistent" % (replay_lsn, stop), step="check")
    if target.kind == "time" and last_commit:
        replayed = datetime.datetime.strptime(last_commit, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=layout.UTC)
        if replayed > target.value:
            raise IntegrityError("recovery replayed a commit of %s, after the target %s" % (last_commit,
                                                                                            target.describe()),
                                 step="check")
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(4, max(len(databases), 1))) as pool:
        counted = list(pool.map(lambda database: server.query("SELECT count(*) FROM pg_class", database), databases))
    relations = {database: int(rows[0][0]) for database, rows in zip(databases, counted)}
    stopping = server.log_lines("recovery stopping", "recovery has paused", "archive recovery complete",
                                "selected new timeline ID")
    return {"replay_lsn": replay_lsn, "last_replayed_commit": last_commit or None,
            "timeline": int(timeline) if timeline.isdigit() else None, "databases": databases,
            "relations": relations, "recovery_log": stopping[-4:]}


def _reachable(path, user):
    """Whether OS user ``user`` may write in ``path`` (runuser's test -w: every parent must let it enter)."""
    done = subprocess.run(["runuser", "-u", user, "--", "test", "-w", path], stdin=subprocess.DEVNULL,  # pylint: disable=ansible-bad-function
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False, timeout=60,
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    return done.returncode == 0


def _touch(path, owner):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    if owner is not None:
        os.fchown(fd, *owner)
    os.close(fd)


_LIBC = {}  # name: the C library's function, or None


def _libc_function(name):
    """The C library's function ``name`` (ctypes, errno kept), or None where it has none (not Linux)."""
    if name not in _LIBC:
        try:
            _LIBC[name] = getattr(ctypes.CDLL(None, use_errno=True), name)
        except (AttributeError, OSError):
            _LIBC[name] = None
        if name == "sync_file_range" and _LIBC[name] is not None:
            _LIBC[name].argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    return _LIBC[name]


_SYNC_FILE_RANGE_WRITE = 2  # sync_file_range(2): start writing the range's dirty pages, do not wait for them


def _start_writeback(fd):
    """Ask the kernel to begin writing a restored file's pages now (sync_file_range, Linux; nothing elsewhere), so
    that the syncfs after the last file has little left to wait for: otherwise a machine with memory to spare holds
    the whole data directory dirty until then, and the flush of a gigabyte begins only after the download ended."""
    writeback = _libc_function("sync_file_range")
    if writeback is not None:
        writeback(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)  # a hint: its failure changes nothing (syncfs still flushes)


def _fsync_tree(root):
    """Flush every restored file and directory to disk before the server starts on them: one syncfs(2) of the data
    directory's file system where the C library has it (Linux; a fsync of each of thousands of files took 40 times
    as long here), else a fsync of each file and directory."""
    syncfs = _libc_function("syncfs")
    if syncfs is not None:
        fd = os.open(root, os.O_RDONLY)
        try:
            if syncfs(fd) == 0:
                return
        finally:
            os.close(fd)
    for directory, _dirs, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(directory, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
