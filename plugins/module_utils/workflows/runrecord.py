# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Every scheduled run leaves a trace: the last run of each command, per host and database (docs/MONITORING.md).

``quankey-backup`` records each run of the commands in :data:`RECORDED` when ``BACKUP_METRICS_DIR`` is set
(cli.py's dispatch, so cron's runner, the systemd units and a manual run all do): in that directory

- ``quankey_backup_<command>_<db>.json``, the state: the last start and end, exit code, duration, the seconds of
  each stage, bytes, what the run counted, the last success (carried from run to run), runs and failures so far;
- ``quankey_backup_<command>_<db>.prom``, the same for node_exporter's textfile collector (:data:`METRICS`).

The start is written before the work and the end after it, whatever happened (cli.py's ``finally``), so a run
killed outright (OOM killer, SIGKILL, a lost machine) shows a last start newer than its last end. Both files are
replaced atomically; writing them never fails the run it records (a warning is logged instead).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import logging
import os
import re
import tempfile
import time

LOG = logging.getLogger("quankey_backup")

# The commands whose runs are recorded (what a schedule runs).
RECORDED = ("backup", "prune", "drill", "replicate", "basebackup")
PREFIX = "quankey_backup_"
ALL = "all"  # the database of a run over every one (drill --all-hosts, replicate --all-databases, basebackup: the cluster)
# The exported metrics: (name, type, help). Every one is labelled command, host and database; the stage and kind
# labels say which stage or which bytes/items. docs/MONITORING.md and the monitoring kit's tests read this table.
METRICS = (
    ("quankey_backup_run_last_start_timestamp_seconds", "gauge",
     "Unix time the last run of this command started."),
    ("quankey_backup_run_last_end_timestamp_seconds", "gauge",
     "Unix time the last run of this command ended (older than its start: running, or killed before it could end)."),
    ("quankey_backup_run_last_exit_code", "gauge",
     "Exit status of the last run that ended (0 success; docs/CLI.md lists the others)."),
    ("quankey_backup_run_last_duration_seconds", "gauge", "Seconds the last run that ended took."),
    ("quankey_backup_run_last_stage_duration_seconds", "gauge",
     "Seconds each stage of the last run that came to its end took (label stage)."),
    ("quankey_backup_run_last_bytes", "gauge",
     "Bytes of the last run that came to its end (label kind: stored, the object written; dump, pg_dump's output)."),
    ("quankey_backup_run_last_items", "gauge",
     "What the last run that came to its end counted (label kind: prune's deleted and kept backups, drill's passed and "
     "failed drills, replicate's present, copied, failed and skipped backups)."),
    ("quankey_backup_run_last_success_timestamp_seconds", "gauge",
     "Unix time the last successful run (exit 0) of this command ended."),
    ("quankey_backup_runs_total", "counter", "Runs of this command that ended, recorded in this directory."),
    ("quankey_backup_run_failures_total", "counter", "Runs of this command that ended with a non-zero exit status."),
)
# Values carried from one run to the next (the start of a run keeps what the last one that ended said).
_CARRIED = ("ended", "exit_code", "duration_seconds", "stage_seconds", "bytes", "items", "last_success", "runs",
            "failures", "error")
_FILE_PART = re.compile(r"[^A-Za-z0-9_.-]")


def _iso(stamp):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp)) if stamp is not None else None


def _escape(value):
    """A label value in the text exposition format (backslash, double quote and newline escaped)."""
    return str(value).replace("\\", "\\\\").replace("\"", "\\\"").replace("\n", "\\n")


def file_stem(command, database):
    """``quankey_backup_<command>_<db>``: the database made safe for a file name (``all`` when there is none)."""
    return PREFIX + _FILE_PART.sub("_", command) + "_" + (_FILE_PART.sub("_", database) if database else ALL)


def outcome_of(result):
    """(stage seconds, bytes, items) of a command's result: what a run's metrics say beyond its times."""
    if not isinstance(result, dict):
        return {}, {}, {}
    stages = dict((str(name), float(value)) for name, value in (result.get("stage_seconds") or {}).items())
    sizes = {}
    for key, kind in (("size_bytes", "stored"), ("dump_bytes", "dump")):
        if isinstance(result.get(key), int):
            sizes[kind] = result[key]
    items = {}
    for key in ("deleted", "kept"):  # prune
        if isinstance(result.get(key), list):
            items[key] = len(result[key])
    for key in ("present", "copied", "failed", "skipped"):  # replicate
        if isinstance(result.get(key), int) and not isinstance(result.get(key), bool):
            items[key] = result[key]
    if isinstance(result.get("drills"), list):  # drill
        for verdict in ("passed", "failed"):
            items[verdict] = len([one for one in result["drills"] if one.get("result") == verdict])
    return stages, sizes, items


def render(state):
    """The state as node_exporter's textfile collector reads it (HELP and TYPE lines, labels escaped)."""
    base = 'command="%s",host="%s",database="%s"' % (
        _escape(state["command"]), _escape(state["host"] or ""), _escape(state["database"] or ALL))
    samples = dict((name, []) for name, _kind, _help in METRICS)

    def add(name, value, extra=None):
        if value is None:
            return
        labels = base + ("".join(',%s="%s"' % (key, _escape(text)) for key, text in extra) if extra else "")
        samples[name].append("%s{%s} %s" % (name, labels, _number(value)))

    add("quankey_backup_run_last_start_timestamp_seconds", state.get("started"))
    add("quankey_backup_run_last_end_timestamp_seconds", state.get("ended"))
    add("quankey_backup_run_last_exit_code", state.get("exit_code"))
    add("quankey_backup_run_last_duration_seconds", state.get("duration_seconds"))
    for stage, seconds in sorted((state.get("stage_seconds") or {}).items()):
        add("quankey_backup_run_last_stage_duration_seconds", seconds, [("stage", stage)])
    for kind, count in sorted((state.get("bytes") or {}).items()):
        add("quankey_backup_run_last_bytes", count, [("kind", kind)])
    for kind, count in sorted((state.get("items") or {}).items()):
        add("quankey_backup_run_last_items", count, [("kind", kind)])
    add("quankey_backup_run_last_success_timestamp_seconds", state.get("last_success"))
    add("quankey_backup_runs_total", state.get("runs") or 0)
    add("quankey_backup_run_failures_total", state.get("failures") or 0)
    lines = []
    for name, kind, text in METRICS:
        if samples[name]:
            lines += ["# HELP %s %s" % (name, text), "# TYPE %s %s" % (name, kind)] + samples[name]
    return "\n".join(lines) + "\n"


def _number(value):
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    return repr(round(float(value), 3))


def write_atomically(path, text, mode=0o644):
    """Replace ``path`` with ``text``: readers (node_exporter) never see half a file."""
    directory = os.path.dirname(path) or "."
    descriptor, tmp = tempfile.mkstemp(prefix=".%s." % os.path.basename(path), dir=directory)
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class RunRecord:
    """The record of one run: :meth:`started` before the work, :meth:`ended` after it (in a ``finally``).

    ``directory``: BACKUP_METRICS_DIR (absolute); ``clock``: seconds since the epoch (tests give their own).
    Neither method raises: a file that cannot be written is a warning, never the run's failure.
    """

    def __init__(self, directory, command, host, database, clock=None):
        self.directory = directory
        self.command = command
        self.host = host
        self.database = database
        self.clock = clock or time.time
        stem = os.path.join(directory, file_stem(command, database))
        self.json_path, self.prom_path = stem + ".json", stem + ".prom"
        self.state = None

    def _previous(self):
        """What the last recorded run left (empty when nothing or something unreadable is there)."""
        try:
            with open(self.json_path) as handle:
                previous = json.load(handle)
        except (OSError, ValueError):
            return {}
        if not isinstance(previous, dict):
            return {}
        return dict((key, previous.get(key)) for key in _CARRIED if key in previous)

    def _write(self, what):
        try:
            write_atomically(self.json_path, json.dumps(self.state, indent=2, sort_keys=True) + "\n")
            write_atomically(self.prom_path, render(self.state))
            return True
        except (OSError, ValueError, TypeError) as error:
            LOG.warning("%s: could not record the %s of this run in BACKUP_METRICS_DIR=%s (%s); the run itself is not "
                        "affected: make the directory writable for this user", self.command, what, self.directory,
                        error)
            return False

    def started(self):
        """Record the start (the last run's end, exit code and success stay until this one ends)."""
        now = self.clock()
        self.state = self._previous()
        self.state.update({"command": self.command, "host": self.host, "database": self.database, "state": "running",
                           "pid": os.getpid(), "started": now, "started_at": _iso(now)})
        for key in ("ended", "last_success"):
            self.state[key + "_at"] = _iso(self.state.get(key))
        return self._write("start")

    def ended(self, exit_code, result=None, error=None):
        """Record the end: exit code, duration; with the command's result its stages, bytes and counts; for exit 0
        the success time. A run that raised has no result: the last ones stay."""
        if self.state is None:
            self.started()
        now = self.clock()
        stages, sizes, items = outcome_of(result)
        failed = exit_code != 0
        self.state.update({"state": "ended", "ended": now, "ended_at": _iso(now), "exit_code": int(exit_code),
                           "duration_seconds": round(max(0.0, now - self.state["started"]), 3),
                           "runs": int(self.state.get("runs") or 0) + 1,
                           "failures": int(self.state.get("failures") or 0) + (1 if failed else 0),
                           "error": error if failed else None})
        if result is not None:  # the command came to its end (a failed drill does, with its verdicts)
            self.state.update({"stage_seconds": stages, "bytes": sizes, "items": items})
        if not failed:
            self.state.update({"last_success": now, "last_success_at": _iso(now)})
        return self._write("end")


def start(directory, command, host, database, clock=None):
    """The :class:`RunRecord` of this run, its start written; None when ``command`` is not recorded or
    ``directory`` (BACKUP_METRICS_DIR) is empty. A relative directory is a warning and records nothing."""
    if not directory or command not in RECORDED:
        return None
    if not os.path.isabs(directory):
        LOG.warning("BACKUP_METRICS_DIR=%s is not an absolute path: this run is not recorded (name the directory from "
                    "/, e.g. /var/lib/prometheus/node-exporter)", directory)
        return None
    record = RunRecord(directory, command, host, database, clock=clock)
    record.started()
    return record
