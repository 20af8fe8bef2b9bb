#!/usr/bin/env python
# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Scheduled health check of this host's backups (installed by the quankey.backup.backup_monitor role).

Runs ``quankey-backup health --json`` for each configured database and writes
- a JSON status file (every database's report and the worst status),
- a Prometheus textfile-collector file (node_exporter's --collector.textfile.directory):
  quankey_backup_status (0 ok, 1 warning, 2 critical), quankey_backup_last_success_timestamp_seconds,
  quankey_backup_last_size_bytes, quankey_backup_age_seconds, quankey_backup_count,
  quankey_backup_check_timestamp_seconds, quankey_backup_check_up, quankey_backup_finding (one per finding that is
  not ok, labelled rule and severity), and the newest restore drill's quankey_backup_drill_last_timestamp_seconds,
  quankey_backup_drill_last_passed, quankey_backup_drill_last_rto_seconds, quankey_backup_drill_last_rpo_seconds
  (docs/MONITORING.md; each run's own record is the engine's, BACKUP_METRICS_DIR), and
  quankey_backup_run_lost (1 when a run recorded its start in runs_dir and its process is gone without an end: killed
  by the OOM killer or SIGKILL),
and runs the alert command (``sh -c``) when the worst status reaches the configured level, with
QUANKEY_BACKUP_STATUS, QUANKEY_BACKUP_SUMMARY and QUANKEY_BACKUP_STATUS_FILE in its environment
and the status JSON on its standard input. Exits 0 (ok), 1 (warning) or 2 (critical).

    quankey-backup-monitor --config /etc/quankey/monitor.json
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import argparse
import calendar
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

# How bad a report is, is the engine's answer: its exit_code, the exit status of `quankey-backup health` (0 ok,
# 1 warning, 2 critical; docs/CLI.md), which also ranks it. This script ranks nothing itself; alert_on names the
# exit status from which to alert, and an info finding is not a problem.
STATUS_NAMES = {0: "ok", 1: "warning", 2: "critical"}
ALERT_FROM = {"warning": 1, "critical": 2}
NOT_A_PROBLEM = ("ok", "info")
METRICS = (
    ("quankey_backup_status", "Health of the backups: 0 ok, 1 warning, 2 critical."),
    ("quankey_backup_last_success_timestamp_seconds", "Unix time of the newest committed backup."),
    ("quankey_backup_last_size_bytes", "Stored size of the newest backup in bytes."),
    ("quankey_backup_age_seconds", "Age of the newest backup in seconds at the last check."),
    ("quankey_backup_count", "Backups of this host and database in the bucket."),
    ("quankey_backup_check_timestamp_seconds", "Unix time of the last health check."),
    ("quankey_backup_check_up", "1 when the last health check produced a report, 0 when it could not run."),
    ("quankey_backup_finding", "1 for each health finding that is not ok (labels rule and severity: warning, critical)."),
    ("quankey_backup_drill_last_timestamp_seconds", "Unix time the newest restore drill of this database started."),
    ("quankey_backup_drill_last_passed", "1 when the newest restore drill passed, 0 when it failed."),
    ("quankey_backup_drill_last_rto_seconds", "Seconds the newest restore drill took to restore (its RTO)."),
    ("quankey_backup_drill_last_rpo_seconds", "Age in seconds of the backup the newest drill restored, when it started "
                                              "(its RPO)."),
)
RUN_LOST = ("quankey_backup_run_lost", "1 when the last run of this command recorded its start and its process is gone "
                                       "without recording its end (killed), else 0.")


def now_text():
    """The current UTC time for log lines."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def log(level, message):
    """One log line on stdout (cron appends it to the monitor log)."""
    sys.stdout.write("%s %s monitor: %s\n" % (now_text(), level, message))
    sys.stdout.flush()


def parse_utc(text):
    """Seconds since the epoch of a '2025-08-09T03:00:00Z' time."""
    return calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ"))


def check_database(config, database):
    """The health report of one database (a critical report when the check itself fails)."""
    command = [config["command"], "--env-file", config["env_file"], "-q", "health", "--json"]
    if config.get("max_age_hours") is not None:
        command += ["--max-age-hours", str(config["max_age_hours"])]
    if config.get("min_size_bytes") is not None:
        command += ["--min-size-bytes", str(config["min_size_bytes"])]
    environment = dict(os.environ)
    if database:
        environment["DB_NAME"] = database
    try:
        done = subprocess.run(command, env=environment, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, universal_newlines=True, timeout=config.get("timeout_seconds", 600),
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        return failed_report(config, database, str(error))
    try:
        report = json.loads(done.stdout)
    except ValueError:
        report = None
    if not isinstance(report, dict) or "status" not in report:
        last_line = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return failed_report(config, database, "exit %d: %s" % (done.returncode, last_line))
    report["check_up"] = True
    return report


def failed_report(config, database, detail):
    """A critical report for a health check that could not run."""
    return {"database": database, "host": config.get("host"), "status": "critical", "exit_code": 2,
            "check_up": False, "latest": None, "backups": 0,
            "findings": [{"rule": "monitor", "severity": "critical",
                          "message": "the health check could not run (%s): see the monitor log" % detail}]}


def mark_failed_run(report, unit):
    """Make a report critical for a scheduled run that failed (quankey-backup-failure@.service, pg_backup's OnFailure=
    hook): until the next check, the status file, the metrics and the alert say so."""
    report.setdefault("findings", []).insert(0, {
        "rule": "scheduled-run", "severity": "critical",
        "message": "the scheduled run %s failed: see journalctl -u %s and the backup log" % (unit, unit)})
    report["status"], report["exit_code"] = "critical", 2


def rank(report):
    """A report's exit code (critical when it has none it could have given)."""
    code = report.get("exit_code")
    return code if code in STATUS_NAMES else 2


def problems(report):
    """The findings that make the report not ok."""
    return [item for item in report.get("findings", []) if item.get("severity") not in NOT_A_PROBLEM]


def summarize(reports, checked_at, runs=()):
    """The status file's content: every report, the worst status and the runs' records (with ``lost``)."""
    worst = max([rank(report) for report in reports] or [2])
    return {"checked_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(checked_at)), "status": STATUS_NAMES[worst],
            "exit_code": worst, "databases": reports, "runs": list(runs)}


def process_alive(pid):
    """Whether ``pid`` is a live quankey-backup process (a reused PID running something else is not)."""
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:
        pass  # someone else's process: it exists
    try:
        with open("/proc/%d/cmdline" % int(pid), "rb") as handle:
            return b"quankey" in handle.read()
    except OSError:
        return True  # no /proc to ask: it exists


def read_runs(directory, alive=process_alive):
    """The run records (workflows/runrecord.py's JSON) of ``directory``, each with ``lost``: it started, did not end,
    and its process is gone."""
    runs = []
    for path in sorted(glob.glob(os.path.join(directory, "quankey_backup_*.json"))) if directory else []:
        try:
            with open(path) as handle:
                run = json.load(handle)
        except (OSError, ValueError):
            continue
        if not isinstance(run, dict) or not run.get("command") or run.get("state") not in ("running", "ended"):
            continue
        run["lost"] = run["state"] == "running" and not alive(run.get("pid"))
        runs.append(run)
    return runs


def render_runs(runs):
    """quankey_backup_run_lost of each run record."""
    if not runs:
        return ""
    name, text = RUN_LOST
    lines = ["# HELP %s %s" % (name, text), "# TYPE %s gauge" % name]
    lines += ['%s{command="%s",host="%s",database="%s"} %d' % (
        name, _label(run["command"]), _label(run.get("host") or ""), _label(run.get("database") or "all"),
        1 if run["lost"] else 0) for run in runs]
    return "\n".join(lines) + "\n"


def _label(value):
    return str(value).replace("\\", "\\\\").replace("\"", "\\\"").replace("\n", "\\n")


def render_metrics(reports, checked_at, host):
    """Prometheus text exposition of the reports."""
    samples = dict((name, []) for name, _help in METRICS)
    for report in reports:
        labels = '{host="%s",database="%s"}' % (_label(report.get("host") or host), _label(report.get("database") or ""))
        samples["quankey_backup_status"].append((labels, rank(report)))
        samples["quankey_backup_check_timestamp_seconds"].append((labels, int(checked_at)))
        samples["quankey_backup_check_up"].append((labels, 1 if report.get("check_up") else 0))
        for finding in problems(report):
            samples["quankey_backup_finding"].append((labels[:-1] + ',rule="%s",severity="%s"}' % (
                _label(finding.get("rule") or ""), _label(finding.get("severity") or "")), 1))
        drill = report.get("drill")
        if isinstance(drill, dict) and drill.get("timestamp"):
            samples["quankey_backup_drill_last_timestamp_seconds"].append((labels, parse_utc(drill["timestamp"])))
            samples["quankey_backup_drill_last_passed"].append((labels, 1 if drill.get("result") == "passed" else 0))
            for key in ("rto_seconds", "rpo_seconds"):
                if drill.get(key) is not None:
                    samples["quankey_backup_drill_last_" + key].append((labels, round(float(drill[key]), 3)))
        if report.get("check_up"):
            samples["quankey_backup_count"].append((labels, int(report.get("backups") or 0)))
        latest = report.get("latest")
        if latest:
            stamp = parse_utc(latest["timestamp"])
            samples["quankey_backup_last_success_timestamp_seconds"].append((labels, stamp))
            size = latest.get("size_bytes", latest.get("object_size"))
            if size is not None:
                samples["quankey_backup_last_size_bytes"].append((labels, int(size)))
            samples["quankey_backup_age_seconds"].append((labels, max(0, int(checked_at) - stamp)))
    lines = []
    for name, text in METRICS:
        if samples[name]:
            lines += ["# HELP %s %s" % (name, text), "# TYPE %s gauge" % name]
            lines += ["%s%s %s" % (name, labels, value) for labels, value in samples[name]]
    return "\n".join(lines) + "\n"


def write_atomically(path, text, mode=0o644):
    """Replace path with text so that readers never see half a file."""
    directory = os.path.dirname(path) or "."
    descriptor, tmp = tempfile.mkstemp(prefix=".%s." % os.path.basename(path), dir=directory)
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(text)
        os.chmod(tmp, mode)
        os.rename(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def alert_summary(status):
    """One line per database that is not ok: what is wrong first."""
    parts = []
    for report in status["databases"]:
        if rank(report) == 0:
            continue
        findings = problems(report)
        message = findings[0]["message"] if findings else "no details"
        parts.append("%s/%s %s: %s" % (report.get("host"), report.get("database"), report.get("status"), message))
    return "; ".join(parts)


def run_alert(config, status, status_file):
    """Run the alert command when the worst status reaches alert_on; returns its exit status (None: not run)."""
    command = config.get("alert_command") or ""
    if not command or status["exit_code"] < ALERT_FROM[config.get("alert_on", "warning")]:
        return None
    environment = dict(os.environ, QUANKEY_BACKUP_STATUS=status["status"], QUANKEY_BACKUP_SUMMARY=alert_summary(status),
                       QUANKEY_BACKUP_STATUS_FILE=status_file)
    try:
        done = subprocess.run(["/bin/sh", "-c", command], env=environment, input=json.dumps(status),
                              universal_newlines=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        log("ERROR", "alert command failed: %s" % error)
        return 1
    if done.returncode != 0:
        log("ERROR", "alert command exited with %d" % done.returncode)
    return done.returncode


def main(argv=None):
    parser = argparse.ArgumentParser(description="Scheduled health check of this host's backups.")
    parser.add_argument("--config", default="/etc/quankey/monitor.json", help="the monitor's settings (JSON)")
    parser.add_argument("--failed-run", metavar="UNIT", default="",
                        help="a scheduled run (this systemd unit) just failed: every database's report is critical")
    args = parser.parse_args(argv)
    with open(args.config) as handle:
        config = json.load(handle)
    checked_at = time.time()
    reports = [check_database(config, database) for database in (config.get("databases") or [None])]
    if args.failed_run:
        for report in reports:
            mark_failed_run(report, args.failed_run)
    for report in reports:
        findings = [item["rule"] for item in problems(report)]
        log("INFO" if report["status"] == "ok" else "WARNING", "%s/%s: %s%s" % (
            report.get("host"), report.get("database"), report["status"], " (%s)" % ", ".join(findings) if findings else ""))
    runs = read_runs(config.get("runs_dir") or (os.path.dirname(config["textfile"]) if config.get("textfile") else ""))
    for run in runs:
        if run["lost"]:
            log("WARNING", "%s of %s/%s started at %s and its process is gone without an end: killed (OOM, SIGKILL?)"
                % (run["command"], run.get("host"), run.get("database"), run.get("started_at")))
    status = summarize(reports, checked_at, runs)
    write_atomically(config["status_file"], json.dumps(status, indent=2, sort_keys=True) + "\n")
    if config.get("textfile"):
        write_atomically(config["textfile"], render_metrics(reports, checked_at, config.get("host")) + render_runs(runs))
    run_alert(config, status, config["status_file"])
    return status["exit_code"]


if __name__ == "__main__":
    sys.exit(main())
