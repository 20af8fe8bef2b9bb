# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The backup_monitor role's check script: status file, Prometheus metrics, alerts."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import stat
import subprocess
import sys
import types

import pytest

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "roles", "backup_monitor", "files",
                      "quankey-backup-monitor.py")
CHECKED_AT = 1754712000  # 2025-08-09T04:00:00Z


def _load_script():
    module = types.ModuleType("quankey_backup_monitor")
    module.__file__ = SCRIPT
    with open(SCRIPT) as handle:
        exec(compile(handle.read(), SCRIPT, "exec"), module.__dict__)  # pylint: disable=exec-used
    return module


monitor = _load_script()


def _report(database, status, latest=True, check_up=True):
    report = {"host": "db1", "database": database, "status": status, "check_up": check_up, "backups": 3,
              "exit_code": {"ok": 0, "warning": 1, "critical": 2}[status],  # as quankey-backup health --json gives it
              "findings": [] if status == "ok" else [{"rule": "age", "severity": status, "message": "too old"}],
              "latest": None}
    if latest:
        report["latest"] = {"name": database + "_backup_20250809_030000", "timestamp": "2025-08-09T03:00:00Z",
                            "size_bytes": 2048, "object_size": 2048}
    return report


def test_metrics_carry_status_timestamp_size_and_age_per_database():
    text = monitor.render_metrics([_report("app", "ok"), _report("other", "warning", latest=False)], CHECKED_AT, "db1")
    lines = text.splitlines()
    assert 'quankey_backup_status{host="db1",database="app"} 0' in lines
    assert 'quankey_backup_status{host="db1",database="other"} 1' in lines
    assert 'quankey_backup_last_success_timestamp_seconds{host="db1",database="app"} 1754708400' in lines
    assert 'quankey_backup_last_size_bytes{host="db1",database="app"} 2048' in lines
    assert 'quankey_backup_age_seconds{host="db1",database="app"} 3600' in lines
    # no backup: no timestamp, size or age sample for that series (absent, not zero)
    assert not any('database="other"' in line for line in lines if line.startswith("quankey_backup_last_"))
    assert "# TYPE quankey_backup_status gauge" in lines


def test_the_newest_drill_and_every_finding_that_is_not_ok_are_metrics():
    drilled = _report("app", "critical")
    drilled["findings"].append({"rule": "drill", "severity": "critical", "message": "the last drill failed"})
    drilled["findings"].append({"rule": "seed", "severity": "info", "message": "seed backups seen"})
    drilled["drill"] = {"timestamp": "2025-08-08T04:00:00Z", "result": "failed", "backup": "app_backup_20250808_030000",
                        "rto_seconds": 12.25, "rpo_seconds": 3600.0, "report_key": "drills/db1/app/x.json"}
    passed = _report("other", "ok")
    passed["drill"] = {"timestamp": "2025-08-09T01:00:00Z", "result": "passed", "backup": "b", "rto_seconds": 1.5,
                       "rpo_seconds": None, "report_key": None}
    never = _report("third", "ok")
    never["drill"] = None
    lines = monitor.render_metrics([drilled, passed, never], CHECKED_AT, "db1").splitlines()
    assert 'quankey_backup_drill_last_timestamp_seconds{host="db1",database="app"} 1754625600' in lines
    assert 'quankey_backup_drill_last_passed{host="db1",database="app"} 0' in lines
    assert 'quankey_backup_drill_last_rto_seconds{host="db1",database="app"} 12.25' in lines
    assert 'quankey_backup_drill_last_rpo_seconds{host="db1",database="app"} 3600.0' in lines
    assert 'quankey_backup_drill_last_passed{host="db1",database="other"} 1' in lines
    assert not any('database="other"' in line for line in lines if line.startswith("quankey_backup_drill_last_rpo"))
    assert not any('database="third"' in line for line in lines if line.startswith("quankey_backup_drill_"))
    assert 'quankey_backup_finding{host="db1",database="app",rule="drill",severity="critical"} 1' in lines
    assert 'quankey_backup_finding{host="db1",database="app",rule="age",severity="critical"} 1' in lines
    assert not any("seed" in line for line in lines)  # info is no problem
    assert "# TYPE quankey_backup_finding gauge" in lines


def test_label_values_are_escaped():
    report = _report('we"ird\\db', "ok")
    assert 'database="we\\"ird\\\\db"' in monitor.render_metrics([report], CHECKED_AT, "db1")


def test_the_worst_status_wins():
    status = monitor.summarize([_report("a", "ok"), _report("b", "critical"), _report("c", "warning")], CHECKED_AT)
    assert (status["status"], status["exit_code"]) == ("critical", 2)
    assert status["checked_at"] == "2025-08-09T04:00:00Z"


def test_a_check_that_cannot_run_is_critical(tmp_path):
    config = {"command": str(tmp_path / "missing"), "env_file": "/nonexistent", "host": "db1"}
    report = monitor.check_database(config, "app")
    assert report["status"] == "critical" and report["check_up"] is False
    assert "could not run" in report["findings"][0]["message"]


def test_a_command_that_prints_no_json_is_critical(tmp_path):
    fake = tmp_path / "quankey-backup"
    fake.write_text("#!/bin/sh\necho 'ERROR health: boom' >&2\nexit 3\n")
    fake.chmod(0o755)
    report = monitor.check_database({"command": str(fake), "env_file": "/x", "host": "db1"}, "app")
    assert report["status"] == "critical"
    assert "exit 3: ERROR health: boom" in report["findings"][0]["message"]


@pytest.mark.parametrize("status, alert_on, runs", [
    ("ok", "warning", False), ("warning", "warning", True), ("warning", "critical", False), ("critical", "critical", True)])
def test_the_alert_runs_from_its_level_on(tmp_path, status, alert_on, runs):
    out = tmp_path / "alert.txt"
    config = {"alert_command": 'echo "$QUANKEY_BACKUP_STATUS|$QUANKEY_BACKUP_SUMMARY" > %s; cat >> %s' % (out, out),
              "alert_on": alert_on}
    summary = monitor.summarize([_report("app", status)], CHECKED_AT)
    result = monitor.run_alert(config, summary, "/var/lib/quankey-backup/health.json")
    assert (result == 0) == runs and out.exists() == runs
    if runs:
        first, rest = out.read_text().split("\n", 1)
        assert first == "%s|db1/app %s: too old" % (status, status)
        assert json.loads(rest)["status"] == status


def test_main_writes_both_files_atomically_and_exits_with_the_status(tmp_path, monkeypatch, capsys):
    fake = tmp_path / "quankey-backup"
    fake.write_text("#!/bin/sh\n[ \"$DB_NAME\" = app ] || exit 9\necho '%s'\nexit 1\n" % json.dumps(_report("app", "warning")))
    fake.chmod(0o755)
    config = {"command": str(fake), "env_file": "/x", "host": "db1", "databases": ["app"],
              "status_file": str(tmp_path / "health.json"), "textfile": str(tmp_path / "quankey_backup.prom")}
    (tmp_path / "monitor.json").write_text(json.dumps(config))
    assert monitor.main(["--config", str(tmp_path / "monitor.json")]) == 1
    assert json.loads((tmp_path / "health.json").read_text())["status"] == "warning"
    assert 'quankey_backup_status{host="db1",database="app"} 1' in (tmp_path / "quankey_backup.prom").read_text()
    assert stat.S_IMODE(os.stat(str(tmp_path / "quankey_backup.prom")).st_mode) == 0o644
    assert sorted(os.listdir(str(tmp_path))) == ["health.json", "monitor.json", "quankey-backup", "quankey_backup.prom"]
    assert "db1/app: warning (age)" in capsys.readouterr().out


def test_the_rank_is_the_engines_exit_code_and_a_report_without_one_is_critical():
    assert [monitor.rank(_report("a", status)) for status in ("ok", "warning", "critical")] == [0, 1, 2]
    assert monitor.rank({"status": "ok"}) == 2 and monitor.rank({"status": "ok", "exit_code": 7}) == 2
    info = dict(_report("a", "ok"), findings=[{"rule": "seed_backups", "severity": "info", "message": "2 seed backups"}])
    assert monitor.problems(info) == [] and monitor.alert_summary(monitor.summarize([info], CHECKED_AT)) == ""


def test_a_failed_run_makes_every_report_critical_and_alerts(tmp_path):
    # pg_backup's failure hook (quankey-backup-failure@.service) runs the check with --failed-run <unit>
    fake = tmp_path / "quankey-backup"
    fake.write_text("#!/bin/sh\necho '%s'\n" % json.dumps(_report("app", "ok")))
    fake.chmod(0o755)
    alert = tmp_path / "alert.txt"
    config = {"command": str(fake), "env_file": "/x", "host": "db1", "databases": ["app"], "alert_on": "critical",
              "alert_command": 'echo "$QUANKEY_BACKUP_STATUS|$QUANKEY_BACKUP_SUMMARY" > %s' % alert,
              "status_file": str(tmp_path / "health.json"), "textfile": str(tmp_path / "quankey_backup.prom")}
    (tmp_path / "monitor.json").write_text(json.dumps(config))
    assert monitor.main(["--config", str(tmp_path / "monitor.json")]) == 0 and not alert.exists()
    assert monitor.main(["--config", str(tmp_path / "monitor.json"), "--failed-run", "quankey-backup.service"]) == 2
    status = json.loads((tmp_path / "health.json").read_text())
    assert status["status"] == "critical" and status["databases"][0]["findings"][0]["rule"] == "scheduled-run"
    assert 'quankey_backup_status{host="db1",database="app"} 2' in (tmp_path / "quankey_backup.prom").read_text()
    assert alert.read_text() == ("critical|db1/app critical: the scheduled run quankey-backup.service failed: see "
                                 "journalctl -u quankey-backup.service and the backup log\n")


def test_a_run_that_started_and_whose_process_is_gone_is_lost(tmp_path):
    def state(command, database, run_state, pid):
        return {"command": command, "host": "db1", "database": database, "state": run_state, "pid": pid,
                "started_at": "2025-08-09T03:00:00Z"}
    (tmp_path / "quankey_backup_backup_app.json").write_text(json.dumps(state("backup", "app", "running", 11)))
    (tmp_path / "quankey_backup_prune_app.json").write_text(json.dumps(state("prune", "app", "running", 22)))
    (tmp_path / "quankey_backup_drill_app.json").write_text(json.dumps(state("drill", "app", "ended", 33)))
    (tmp_path / "quankey_backup_x.json").write_text("{broken")
    runs = monitor.read_runs(str(tmp_path), alive=lambda pid: pid == 22)
    assert [(run["command"], run["lost"]) for run in runs] == [("backup", True), ("drill", False), ("prune", False)]
    lines = monitor.render_runs(runs).splitlines()
    assert 'quankey_backup_run_lost{command="backup",host="db1",database="app"} 1' in lines
    assert 'quankey_backup_run_lost{command="prune",host="db1",database="app"} 0' in lines
    assert "# TYPE quankey_backup_run_lost gauge" in lines
    assert monitor.render_runs([]) == "" and monitor.read_runs("") == []


def test_process_alive_asks_the_process_table():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "quankey-backup"])
    other = subprocess.Popen(["sleep", "60"])
    try:
        assert monitor.process_alive(child.pid)
        assert not monitor.process_alive(other.pid)  # alive, but no quankey-backup process: a reused PID
    finally:
        for process in (child, other):
            process.kill()
            process.wait()
    assert not monitor.process_alive(child.pid) and not monitor.process_alive(None)


@pytest.mark.parametrize("role_vars, databases", [
    ({"pg_backup_databases": ["app", "audit"], "pg_backup_kind": "both"}, ["app", "audit"]),
    ({"pg_backup_databases": ["app", "audit"]}, ["app", "audit"]),  # pg_backup_kind unset: logical
    ({"pg_backup_databases": ["app", "audit"], "pg_backup_kind": "physical"}, []),  # once: the host's base and WAL
    ({}, []),  # no pg_backup on the host: the env file's DB_NAME
])
def test_the_monitor_checks_each_database_except_on_a_physical_only_host(role_vars, databases):
    """The role's default backup_monitor_databases, rendered as Ansible renders it (the monitor script runs one
    health check per entry, and one with the env file's DB_NAME for none)."""
    import jinja2  # pylint: disable=import-outside-toplevel
    import yaml  # pylint: disable=import-outside-toplevel
    defaults = os.path.join(os.path.dirname(SCRIPT), "..", "defaults", "main.yml")
    with open(defaults) as handle:
        expression = yaml.safe_load(handle)["backup_monitor_databases"]
    inner = expression.strip()[2:-2]  # "{{ ... }}"
    rendered = jinja2.Environment().from_string("{{ (%s) | tojson }}" % inner).render(**role_vars)
    assert json.loads(rendered) == databases
