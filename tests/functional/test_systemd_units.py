# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The systemd units of pg_backup_scheduler: systemd (and backup_monitor's), rendered by the roles' own tasks with
ansible-playbook on localhost into a directory of their own, for each schedule, then judged by systemd itself:
``systemd-analyze verify`` (with the runner and the health check script present where the units run them), and the
calendar each timer gets. The preflight refuses a custom schedule without its OnCalendar=. Molecule installs the same
units on a host (db2) and checks them there, enabled offline."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

# scripts/bootstrap.sh installs it (Debian's systemd package); under CI a missing one fails rather than skips
pytestmark = pytest.mark.skipif(not shutil.which("systemd-analyze") and not os.environ.get("CI"),
                                reason="systemd-analyze is not installed: apt-get install systemd")

PLAY = """
- hosts: localhost
  connection: local
  gather_facts: false
  tasks:
"""
TASK = """
    - ansible.builtin.include_role:
        name: quankey.backup.{role}
        tasks_from: {tasks}
"""


def _playbook(tmp, extra_vars, roles=("pg_backup", "backup_monitor"), tasks="systemd_units.yml"):
    """ansible-playbook on localhost running these roles' tasks file; (exit status, output)."""
    collections = tmp / "collections" / "ansible_collections" / "quankey"
    if not collections.exists():
        collections.mkdir(parents=True)
        (collections / "backup").symlink_to(ROOT)
    play = tmp / ("play-%s" % tasks)
    play.write_text(PLAY + "".join(TASK.format(role=role, tasks=tasks) for role in roles))
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(tmp / "collections"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_HOME=str(tmp / "ansible-home"), ANSIBLE_LOCALHOST_WARNING="false",
               PATH="%s:%s" % (BIN, os.environ.get("PATH", "/usr/bin:/bin")))
    done = subprocess.run([str(BIN / "ansible-playbook"), "-i", "localhost,", str(play), "-e", json.dumps(extra_vars)],
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                          timeout=300, check=False)
    return done.returncode, done.stdout


def _render(tmp, **role_vars):
    """The units pg_backup and backup_monitor write for these variables, in tmp/units; the runner and the monitor's
    script exist (systemd-analyze verify wants ExecStart's program)."""
    units, sbin = tmp / "units", tmp / "sbin"
    units.mkdir(exist_ok=True)
    sbin.mkdir(exist_ok=True)
    for name in ("quankey-backup-run", "quankey-backup-base-run", "quankey-backup-monitor"):
        (sbin / name).write_text("#!/bin/sh\nexit 0\n")
        (sbin / name).chmod(0o755)
    extra = dict({"_pg_backup_systemd_dir": str(units), "_backup_monitor_systemd_dir": str(units),
                  "pg_backup_runner_path": str(sbin / "quankey-backup-run"),
                  "backup_monitor_script_path": str(sbin / "quankey-backup-monitor")}, **role_vars)
    status, out = _playbook(tmp, extra)
    assert status == 0, out
    return units


def _settings(path):
    settings = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


def _verify(units, *names):
    return subprocess.run(["systemd-analyze", "verify"] + [str(units / name) for name in names],
                          capture_output=True, text=True, timeout=120, check=False)


UNITS = ("quankey-backup.service", "quankey-backup.timer", "quankey-backup-failure@quankey-backup.service",
         "quankey-backup-monitor.service", "quankey-backup-monitor.timer")


@pytest.mark.parametrize("schedule, splay, on_calendar, expected", [
    ("daily", 0, "", "*-*-* 03:00:00"),
    ("12-hour", 30, "", "*-*-* 03,15:00:00"),
    ("6-hour", 5, "", "*-*-* 03,09,15,21:00:00"),
    ("custom", 0, "Mon..Fri *-*-* 00/4:45", "Mon..Fri *-*-* 00/4:45"),
])
def test_systemd_accepts_the_units_of_every_schedule(tmp_path, schedule, splay, on_calendar, expected):
    units = _render(tmp_path, pg_backup_schedule=schedule, pg_backup_splay_minutes=splay,
                    pg_backup_cron_expression="45 */4 * * 1-5" if schedule == "custom" else "",
                    pg_backup_systemd_on_calendar=on_calendar)
    verify = _verify(units, *UNITS)
    assert (verify.returncode, verify.stdout, verify.stderr) == (0, "", "")
    timer = _settings(units / "quankey-backup.timer")
    assert timer["OnCalendar"] == [expected] and timer["Persistent"] == ["true"]
    if splay:
        assert (timer["RandomizedDelaySec"], timer["FixedRandomDelay"]) == (["%dmin" % splay], ["true"])
    else:
        assert "RandomizedDelaySec" not in timer
    service = _settings(units / "quankey-backup.service")
    assert service["ExecStart"] == [str(tmp_path / "sbin" / "quankey-backup-run")]
    assert service["OnFailure"] == ["quankey-backup-failure@%n.service"] and service["User"] == ["quankey-backup"]
    assert service["ReadWritePaths"] == ["/var/lib/quankey-backup /var/log/quankey -/var/lib/prometheus/node-exporter"]
    assert (service["ProtectSystem"], service["ProtectHome"], service["NoNewPrivileges"]) == (["strict"], ["yes"], ["yes"])
    assert _settings(units / "quankey-backup-failure@.service")["ExecStart"] == [
        str(tmp_path / "sbin" / "quankey-backup-failed") + " %i"]
    assert os.access(str(tmp_path / "sbin" / "quankey-backup-failed"), os.X_OK)
    assert _settings(units / "quankey-backup-monitor.timer")["OnCalendar"] == ["*:00/30:00"]


@pytest.mark.parametrize("kind, schedule, on_calendar, expected", [
    ("physical", "weekly", "", "Sun *-*-* 01:30:00"),
    ("both", "custom", "Sat *-*-* 02:30:00", "Sat *-*-* 02:30:00"),
    ("logical", "weekly", "", None),
])
def test_the_base_backups_units_are_written_for_the_physical_kinds_and_systemd_accepts_them(
        tmp_path, kind, schedule, on_calendar, expected):
    units = _render(tmp_path, pg_backup_kind=kind, pg_backup_base_schedule=schedule,
                    pg_backup_base_systemd_on_calendar=on_calendar, pg_backup_splay_minutes=10)
    # physical makes no dumps: their service and timer are not written; the failure hook is (the base service's)
    dumps = kind != "physical"
    assert (units / "quankey-backup.timer").exists() is dumps and (units / "quankey-backup.service").exists() is dumps
    assert (units / "quankey-backup-failure@.service").exists()
    if expected is None:
        assert not (units / "quankey-backup-base.service").exists() and not (units / "quankey-backup-base.timer").exists()
        return
    verify = _verify(units, "quankey-backup-base.service", "quankey-backup-base.timer",
                     "quankey-backup-failure@quankey-backup-base.service")
    assert (verify.returncode, verify.stdout, verify.stderr) == (0, "", "")
    timer = _settings(units / "quankey-backup-base.timer")
    assert timer["OnCalendar"] == [expected] and timer["Unit"] == ["quankey-backup-base.service"]
    assert (timer["RandomizedDelaySec"], timer["Persistent"]) == (["10min"], ["true"])
    service = _settings(units / "quankey-backup-base.service")
    # as the server's OS user (peer authentication over the socket), a member of the backup group for the log, its lock
    # and the runs' metrics; a failure goes to the same hook as a failed dump's
    assert (service["User"], service["SupplementaryGroups"]) == (["postgres"], ["quankey-backup"])
    assert service["ExecStart"] == [str(tmp_path / "sbin" / "quankey-backup-base-run")]
    assert service["OnFailure"] == ["quankey-backup-failure@%n.service"] and service["SuccessExitStatus"] == ["75"]
    assert service["StandardOutput"] == ["append:/var/log/quankey/backup.log"]
    assert service["ReadWritePaths"] == ["/var/lib/quankey-backup /var/log/quankey -/var/lib/prometheus/node-exporter"]


def test_the_verification_fails_on_a_calendar_systemd_refuses(tmp_path):
    # the check above can fail: a calendar systemd cannot parse makes the timer refused
    units = _render(tmp_path, pg_backup_schedule="custom", pg_backup_cron_expression="45 */4 * * 1-5",
                    pg_backup_systemd_on_calendar="every weekday at 4")
    verify = _verify(units, "quankey-backup.timer")
    assert verify.returncode != 0 and "Failed to parse calendar specification" in verify.stderr


def test_a_home_under_home_makes_the_sandbox_read_only_there_not_hidden(tmp_path):
    units = _render(tmp_path, pg_backup_home="/home/quankey-backup", pg_backup_metrics_dir="")
    service = _settings(units / "quankey-backup.service")
    assert service["ProtectHome"] == ["read-only"] and service["ReadWritePaths"] == ["/home/quankey-backup /var/log/quankey"]
    assert _verify(units, "quankey-backup.service").returncode == 0


@pytest.mark.parametrize("role_vars, message", [
    ({"pg_backup_schedule": "custom", "pg_backup_cron_expression": "45 */4 * * 1-5"},
     "pg_backup_schedule=custom with pg_backup_scheduler=systemd needs pg_backup_systemd_on_calendar"),
    ({"pg_backup_schedule": "daily", "pg_backup_systemd_on_calendar": "hourly"},
     "pg_backup_systemd_on_calendar (hourly) is for pg_backup_schedule=custom; with daily the timer runs at *-*-* 03:00:00"),
])
def test_the_preflight_refuses_a_timer_without_its_calendar(tmp_path, role_vars, message):
    role_vars = dict({"pg_backup_scheduler": "systemd", "pg_backup_databases": ["app"], "pg_backup_s3_bucket": "bucket",
                      "pg_backup_encryption_key": "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
                      "pg_backup_seed_takeover": False}, **role_vars)
    status, out = _playbook(tmp_path, role_vars, roles=("pg_backup",), tasks="preflight.yml")
    assert status != 0
    assert "Check the systemd timer's calendar" in out and message in " ".join(out.split()), out


def test_the_preflight_refuses_a_physical_only_host_without_scheduled_base_backups(tmp_path):
    role_vars = {"pg_backup_kind": "physical", "pg_backup_base_schedule": "none", "pg_backup_databases": ["app"],
                 "pg_backup_s3_bucket": "bucket", "pg_backup_seed_takeover": False,
                 "pg_backup_encryption_key": "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="}
    status, out = _playbook(tmp_path, role_vars, roles=("pg_backup",), tasks="preflight.yml")
    words = " ".join(out.split())
    assert status != 0 and "Check that a physical-only host schedules its base backups" in out, out
    assert "would have no scheduled backup at all" in words
    assert "Set pg_backup_base_schedule to weekly, daily or custom" in words
