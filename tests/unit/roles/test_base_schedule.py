# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""pg_backup's scheduled base backup (pg_backup_kind physical or both): its runner, run for real with a stand-in
command (the lock, the command line, the exit status), when its presets run, and that only the physical kinds
schedule it. molecule/archiving runs the installed runner as cron does against a real PostgreSQL 17;
tests/functional/test_systemd_units.py has systemd judge its units."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ast
import fcntl
import os
import subprocess

import jinja2
import pytest
import yaml
from ansible.plugins.filter.core import FilterModule as AnsibleCoreFilters

ROLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "roles", "pg_backup")


def _environment():
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(os.path.join(ROLE, "templates")), trim_blocks=True,
                                     keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    environment.filters.update(AnsibleCoreFilters().filters())
    return environment


def _yaml(*parts):
    with open(os.path.join(ROLE, *parts)) as handle:
        return yaml.safe_load(handle)


def _runner(tmp_path, fast=False, exit_code=0, prune=False, prune_exit=0):
    command = tmp_path / "quankey-backup"
    command.write_text('#!/bin/sh\necho "$@" >> %s/calls\ncase "$3" in prune) exit %d;; esac\nexit %d\n'
                       % (tmp_path, prune_exit, exit_code))
    command.chmod(0o755)
    text = _environment().get_template("quankey-backup-base-run.sh.j2").render(
        pg_backup_prune=prune, pg_backup_retention_days=30, pg_backup_min_keep=3,
        ansible_managed="Ansible managed", inventory_hostname="db1", pg_backup_kind="physical",
        pg_backup_base_fast_checkpoint=fast, pg_backup_postgres_os_user="postgres", pg_backup_scheduler="cron",
        pg_backup_base_schedule="weekly", pg_backup_wal_env_file="/etc/quankey/wal's.env",
        pg_backup_postgres_socket_dir="/var/run/postgresql", _pg_backup_log_file="/var/log/quankey/backup.log",
        _pg_backup_base_lock_file=str(tmp_path / "base.lock"), _pg_backup_command=str(command))
    script = tmp_path / "base-run.sh"
    script.write_text(text)
    return text, script


def _run(tmp_path, script):
    proc = subprocess.run(["/bin/sh", str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, check=False)
    calls = (tmp_path / "calls").read_text().splitlines() if (tmp_path / "calls").exists() else []
    return proc, calls


@pytest.mark.parametrize("fast, call", [
    (False, "--env-file /etc/quankey/wal's.env basebackup"),
    (True, "--env-file /etc/quankey/wal's.env basebackup --fast"),
])
def test_the_runner_takes_one_base_backup_with_the_wal_push_settings(tmp_path, fast, call):
    text, script = _runner(tmp_path, fast=fast)
    proc, calls = _run(tmp_path, script)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert calls == [call]  # no prune: this host cannot delete (pg_backup_prune: false)
    assert "INFO run: base backup of the cluster" in proc.stdout and "base backup done (exit 0)" in proc.stdout
    assert "prune" not in "".join(line for line in text.splitlines() if not line.startswith("#"))


def test_a_failed_base_backup_is_the_runs_exit_status(tmp_path):
    _text, script = _runner(tmp_path, exit_code=4)
    proc, calls = _run(tmp_path, script)
    assert proc.returncode == 4 and len(calls) == 1  # systemd's OnFailure= hook and the run's record see it
    assert "base backup done (exit 4)" in proc.stdout


def test_with_prune_a_successful_base_backup_is_followed_by_the_physical_prune(tmp_path):
    text, script = _runner(tmp_path, prune=True)
    proc, calls = _run(tmp_path, script)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert calls == ["--env-file /etc/quankey/wal's.env basebackup",
                     "--env-file /etc/quankey/wal's.env prune --kind physical"]
    assert "INFO run: prune of the base backups and the archived WAL" in proc.stdout
    assert "30 days, never the newest 3 good ones" in text


def test_a_failed_base_backup_is_not_followed_by_a_prune_and_a_failed_prune_is_the_runs_exit_status(tmp_path):
    _text, script = _runner(tmp_path, prune=True, exit_code=4)
    proc, calls = _run(tmp_path, script)
    assert proc.returncode == 4 and calls == ["--env-file /etc/quankey/wal's.env basebackup"]
    (tmp_path / "calls").unlink()
    _text, script = _runner(tmp_path, prune=True, prune_exit=5)
    proc, calls = _run(tmp_path, script)
    assert proc.returncode == 5 and len(calls) == 2 and "base backup done (exit 5)" in proc.stdout


def test_a_run_that_finds_the_previous_one_going_skips_with_75(tmp_path):
    _text, script = _runner(tmp_path)
    with open(str(tmp_path / "base.lock"), "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        proc, calls = _run(tmp_path, script)
    assert proc.returncode == 75 and calls == []
    assert "the previous base backup still holds" in proc.stdout
    proc, calls = _run(tmp_path, script)  # released: the next one runs
    assert proc.returncode == 0 and len(calls) == 1


def _expression(name, **values):
    variables = _yaml("vars", "main.yml")
    return _environment().from_string(variables[name]).render(**values).strip()


@pytest.mark.parametrize("schedule, splay, expression, fields", [
    ("weekly", 0, "", ["30", "1", "*", "*", "0"]),
    ("daily", 0, "", ["30", "1", "*", "*", "*"]),
    ("weekly", 45, "", ["15", "2", "*", "*", "0"]),  # 01:30 plus the host's offset of 45 minutes
    ("custom", 0, "5 4 * * 6", ["5", "4", "*", "*", "6"]),
])
def test_the_presets_run_at_half_past_one_plus_the_hosts_splay(schedule, splay, expression, fields):
    rendered = _expression("_pg_backup_base_cron_fields", pg_backup_base_schedule=schedule,
                           pg_backup_base_cron_expression=expression, _pg_backup_splay_minute=splay)
    assert ast.literal_eval(rendered) == fields


@pytest.mark.parametrize("kind, schedule, scheduled", [
    ("logical", "weekly", "False"), ("physical", "weekly", "True"), ("both", "daily", "True"), ("both", "none", "False"),
])
def test_only_the_physical_kinds_schedule_a_base_backup(kind, schedule, scheduled):
    archives = _expression("_pg_backup_archives_wal", pg_backup_kind=kind)
    assert _expression("_pg_backup_base_scheduled", _pg_backup_archives_wal=archives == "True",
                       pg_backup_base_schedule=schedule) == scheduled


def test_the_cron_entry_is_the_servers_users_and_removed_when_not_scheduled():
    tasks = dict((task["name"], task) for task in _yaml("tasks", "base_schedule.yml"))
    entry = [task for task in tasks.values() if "ansible.builtin.cron" in task][0]
    assert entry["ansible.builtin.cron"]["user"] == "{{ pg_backup_postgres_os_user }}"
    assert entry["ansible.builtin.cron"]["job"] == "{{ _pg_backup_base_job }}"
    assert "_pg_backup_base_scheduled and pg_backup_scheduler == 'cron'" in entry["when"]
    removal = [task for task in tasks.values() if "ansible.builtin.file" in task and "/etc/cron.d/quankey-backup-base"
               in task.get("loop", "")][0]
    assert removal["when"] == "not (_pg_backup_base_scheduled and pg_backup_scheduler == 'cron')"
    assert _yaml("vars", "main.yml")["_pg_backup_base_job"] == (
        "{{ _pg_backup_base_runner_path }} >> {{ _pg_backup_log_file }} 2>&1")  # the dumps' log, as cron's line for them


@pytest.mark.parametrize("kind, scheduled", [("logical", "True"), ("both", "True"), ("physical", "False")])
def test_physical_schedules_no_dumps(kind, scheduled):
    assert _expression("_pg_backup_dumps_scheduled", pg_backup_kind=kind) == scheduled


def test_the_dumps_cron_entry_and_runner_go_with_the_physical_kind():
    tasks = dict((task["name"], task) for task in _yaml("tasks", "schedule.yml"))
    entry = [task for task in tasks.values() if "ansible.builtin.cron" in task][0]
    assert "pg_backup_scheduler == 'cron' and _pg_backup_dumps_scheduled" in entry["when"]
    assert tasks["Install the script each scheduled run runs (lock, then backup and prune of each database)"][
        "when"] == "_pg_backup_dumps_scheduled"
    removal = tasks["Remove the dumps' runner and cron schedule (pg_backup_kind physical schedules no dumps)"]
    assert removal["when"] == "not _pg_backup_dumps_scheduled"
    assert removal["loop"] == ["/etc/cron.d/quankey-backup", "{{ pg_backup_runner_path }}"]


def test_a_physical_host_without_a_base_schedule_is_refused_with_the_fix():
    name = "Check that a physical-only host schedules its base backups (pg_backup_kind physical)"
    (check,) = [task for task in _yaml("tasks", "preflight.yml") if task["name"] == name]
    assert check["ansible.builtin.assert"]["that"] == "pg_backup_kind != 'physical' or pg_backup_base_schedule != 'none'"
    message = check["ansible.builtin.assert"]["fail_msg"]
    assert "no scheduled backup at all" in message and "Set pg_backup_base_schedule to weekly, daily or custom" in message
