# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""restore_runbook's RESTORE.md by the host's kind: a physical-only host (pg_backup_kind physical) makes no dumps, so
its runbook leads with point-in-time recovery and names no dump restore (restore --db ...) that could not find a
backup; a host with dumps keeps them first, and its point-in-time section when it archives WAL too."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os

import jinja2
from ansible.plugins.filter.core import FilterModule as AnsibleCoreFilters

from ansible_collections.quankey.backup.plugins.filter import engine

ROLE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "roles", "restore_runbook")


def _render(dumps, pitr, scheduler="cron"):
    values = {
        "ansible_managed": "Ansible managed", "inventory_hostname": "db1", "restore_runbook_host_id": "db1",
        "restore_runbook_s3_bucket": "backups", "restore_runbook_s3_prefix": "prod", "restore_runbook_databases": ["app"],
        "restore_runbook_backup_name": "", "restore_runbook_env_file": "/etc/quankey/backup.env",
        "restore_runbook_command": "quankey-backup", "restore_runbook_runner_path": "/usr/local/sbin/quankey-backup-run",
        "restore_runbook_log_file": "/var/log/quankey/backup.log", "restore_runbook_iam_policy_path": "/etc/quankey/i.json",
        "restore_runbook_restore_role": "quankey_restore", "restore_runbook_app_stop_command": "pm2 stop quankey",
        "restore_runbook_app_start_command": "pm2 start quankey", "restore_runbook_contacts": [],
        "restore_runbook_pitr": pitr, "restore_runbook_dumps": dumps, "pg_backup_scheduler": scheduler,
        "pg_backup_postgres_os_user": "postgres",
        "_restore_runbook_cmd": "quankey-backup", "_restore_runbook_prefixes": engine.backup_prefixes("db1", "prod"),
        "_restore_runbook_base_prefix": engine.base_prefix("db1", "prod"),
        "_restore_runbook_wal_prefix": engine.wal_prefix("db1", "prod"),
    }
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(os.path.join(ROLE_DIR, "templates")),
                                     trim_blocks=True, keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    environment.filters.update(AnsibleCoreFilters().filters())
    return environment.get_template("RESTORE.md.j2").render(**values)


def _headings(text):
    return [line for line in text.splitlines() if line.startswith("## ")]


def test_a_physical_only_runbook_leads_with_point_in_time_recovery_and_names_no_dump():
    text = _render(dumps=False, pitr=True)
    assert _headings(text)[0] == "## Point-in-time recovery: the whole cluster as it was at a moment"
    assert "**This host makes no dumps** (`pg_backup_kind: physical`)" in text
    assert "restore --db app" not in text and "## Database `app`" not in text and "--target-db" not in text
    assert "--with-globals" not in text and "The seed" not in text
    assert "quankey-backup restore --pitr --data-dir" in text and "(`pg_backup_kind` physical)" in text
    assert "s3://backups/prod/base/db1/" in text and "s3://backups/prod/wal/db1/" in text
    assert "runuser -u postgres -- /usr/local/sbin/quankey-backup-base-run" in text
    assert "/usr/local/sbin/quankey-backup-run\n" not in text  # the dumps' runner is not installed there
    systemd = _render(dumps=False, pitr=True, scheduler="systemd")
    assert "systemctl list-timers quankey-backup-base.timer" in systemd and "quankey-backup.timer" not in systemd


def test_a_host_with_dumps_keeps_them_first_and_pitr_after_with_both():
    both = _render(dumps=True, pitr=True)
    headings = _headings(both)
    assert headings[0] == "## This host's backups" and "## Database `app`" in headings
    assert headings.index("## Point-in-time recovery: the whole cluster as it was at a moment") > headings.index(
        "## Emergency: the database is lost or damaged")
    assert both.count("## Point-in-time recovery") == 1 and "(`pg_backup_kind` both)" in both
    assert "   /usr/local/sbin/quankey-backup-run\n" in both and "makes no dumps" not in both
    logical = _render(dumps=True, pitr=False)
    assert "## Point-in-time recovery" not in logical and "restore --db app --backup latest" in logical
