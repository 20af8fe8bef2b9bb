# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""pg_backup's scheduled runner: each database backed up, then pruned - unless the host cannot delete
(pg_backup_prune: false), whose runs only back up (issue 16 item 2) - and with a replica then replicated. The script is
run for real, with a stand-in command that records what it is asked; the service unit says the same steps."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import subprocess

import jinja2
import pytest
import yaml
from ansible.plugins.filter.core import FilterModule as AnsibleCoreFilters

TEMPLATE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "roles", "pg_backup", "templates")


def _runner(tmp_path, prune, fail_backup_of="", replica_bucket="", replica_prune=False, base_scheduled=False):
    command = tmp_path / "quankey-backup"
    command.write_text('#!/bin/sh\necho "$DB_NAME $3" >> %s/calls\n[ "$3" = backup ] && [ "$DB_NAME" = %s ] && exit 4\n'
                       'exit 0\n' % (tmp_path, fail_backup_of or "-"))
    command.chmod(0o755)
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATE_DIR), trim_blocks=True,
                                     keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    environment.filters.update(AnsibleCoreFilters().filters())
    text = environment.get_template("quankey-backup-run.sh.j2").render(
        ansible_managed="Ansible managed", inventory_hostname="db1", pg_backup_prune=prune,
        pg_backup_retention_days=30, pg_backup_min_keep=3, pg_backup_keep_daily=0, pg_backup_keep_weekly=0,
        pg_backup_keep_monthly=0, pg_backup_keep_yearly=0, _pg_backup_log_file="/var/log/quankey/backup.log",
        _pg_backup_lock_file=str(tmp_path / "lock"), pg_backup_env_file="/etc/quankey/backup.env",
        _pg_backup_command=str(command), pg_backup_databases=["one", "two"], pg_backup_replica_bucket=replica_bucket,
        pg_backup_replica_prune=replica_prune, _pg_backup_base_scheduled=base_scheduled)
    script = tmp_path / "run.sh"
    script.write_text(text)
    proc = subprocess.run(["/bin/sh", str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, check=False)
    calls = (tmp_path / "calls").read_text().split("\n")[:-1] if (tmp_path / "calls").exists() else []
    return text, proc, calls


@pytest.mark.parametrize("prune, calls", [
    (True, ["one backup", "one prune", "two backup", "two prune"]),
    (False, ["one backup", "two backup"]),
])
def test_each_database_is_backed_up_and_pruned_unless_the_host_cannot_delete(tmp_path, prune, calls):
    text, proc, made = _runner(tmp_path, prune)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert made == calls
    assert ("playbooks/prune.yml" in text) is not prune


def test_with_scheduled_base_backups_the_dumps_runs_prune_only_the_dumps(tmp_path):
    text, proc, made = _runner(tmp_path, True, base_scheduled=True)  # pg_backup_kind both
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert made == ["one backup", "one prune", "two backup", "two prune"]
    assert '"$COMMAND" --env-file "$ENV_FILE" prune --kind logical || status=$?' in text
    assert "the base backup runner prunes the base backups" in text
    (tmp_path / "logical").mkdir()
    plain, _proc, _made = _runner(tmp_path / "logical", True)  # pg_backup_kind logical: prune as before
    assert '"$COMMAND" --env-file "$ENV_FILE" prune || status=$?' in plain


@pytest.mark.parametrize("prune", [True, False])
def test_a_failed_backup_is_the_runs_status_and_the_next_database_still_runs(tmp_path, prune):
    _text, proc, made = _runner(tmp_path, prune, fail_backup_of="one")
    assert proc.returncode == 4
    assert made == ["one backup", "two backup"] + (["two prune"] if prune else [])


@pytest.mark.parametrize("prune", [True, False])
def test_with_a_replica_each_database_is_then_replicated_so_a_copy_that_failed_is_made_now(tmp_path, prune):
    text, proc, made = _runner(tmp_path, prune, fail_backup_of="one", replica_bucket="copy", replica_prune=True)
    assert proc.returncode == 4, proc.stdout + proc.stderr  # the failed backup's status, every step still run
    assert made == ["one backup", "one replicate", "two backup"] + (["two prune"] if prune else []) + ["two replicate"]
    assert "s3://copy" in text and ("prune also prunes the replica" in text) is prune
    (tmp_path / "plain").mkdir()
    _text, _proc, plain = _runner(tmp_path / "plain", prune)  # no replica: no replicate
    assert plain == ["one backup"] + (["one prune"] if prune else []) + ["two backup"] + (["two prune"] if prune else [])


@pytest.mark.parametrize("prune, replica, steps", [
    (True, "", "backup, then prune"),
    (False, "", "backup"),
    (True, "copy", "backup, then prune, then replicate"),
    (False, "copy", "backup, then replicate"),
])
def test_the_service_says_the_steps_the_runner_takes(prune, replica, steps):
    with open(os.path.join(TEMPLATE_DIR, "..", "vars", "main.yml")) as handle:
        expression = yaml.safe_load(handle)["_pg_backup_run_steps"]
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATE_DIR), trim_blocks=True,
                                     keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    run_steps = environment.from_string(expression).render(pg_backup_prune=prune, pg_backup_replica_bucket=replica)
    assert run_steps == steps
    unit = environment.get_template("quankey-backup.service.j2").render(
        ansible_managed="Ansible managed", inventory_hostname="db1", pg_backup_runner_path="/usr/local/sbin/run",
        pg_backup_user="quankey-backup", pg_backup_group="quankey-backup", _pg_backup_log_file="/var/log/quankey/b.log",
        _pg_backup_run_steps=run_steps, pg_backup_home="/var/lib/quankey-backup", pg_backup_log_dir="/var/log/quankey",
        _pg_backup_systemd_protect_home="yes", pg_backup_metrics_dir="")
    assert "Description=quankey-backup scheduled run (%s of each database)\n" % steps in unit
