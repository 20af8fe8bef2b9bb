# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The operators' playbooks against the converged hosts: backup-now, restore (with its confirmation and
the application stop/start), health's fleet table, and setup's restore role (check mode, an unsafe role)."""

import re
import sys

import pytest

from conftest import ROOT, playbook

sys.path.insert(0, str(ROOT / "tests"))
import sampledb  # noqa: E402  pylint: disable=wrong-import-position


@pytest.fixture(scope="module", autouse=True)
def _policies(policies_attached):
    return policies_attached


def test_backup_now_backs_up_the_chosen_host(hosts):
    before = hosts["db3"].check_output("quankey-backup list --json")
    status, out = playbook("backup-now.yml", "-l", "db3", "-e", "prune=true")
    assert status == 0, out
    assert "app_db3: app_db3_backup_" in out and "6 tables" in out
    assert hosts["db3"].check_output("quankey-backup list --json") != before


def test_restore_asks_before_replacing_and_stops_nothing_unconfirmed(hosts, postgres):
    postgres.psql("DROP DATABASE IF EXISTS app_db4_copy")
    postgres.psql("CREATE DATABASE app_db4_copy")
    status, out = playbook("restore.yml", "-l", "db4", "-e", "target_db=app_db4_copy", "-e", "replace=true",
                           "-e", "app_stop=true")
    assert status != 0 and "Not confirmed" in out, out
    assert not hosts["db4"].file("/tmp/app-stopped").exists
    assert postgres.psql("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'", db="app_db4_copy").strip() == "0"


def test_restore_replaces_with_the_application_stopped_and_reports_the_verification(hosts, postgres):
    status, out = playbook("restore.yml", "-l", "db4", "-e", "backup=latest", "-e", "target_db=app_db4_copy",
                           "-e", "replace=true", "-e", "app_stop=true", "-e", "confirm=yes")
    assert status == 0, out
    assert "into app_db4_copy on db4" in out
    assert "tables: 6 restored, 6 in the backup" in out and "matches the metadata" in out
    assert "its SQL runs as: the restore role quankey_restore (BACKUP_RESTORE_ROLE)" in out
    assert "SQL ran as: quankey_restore" in out
    assert "is kept as app_db4_copy__replaced_" in out
    assert hosts["db4"].file("/tmp/app-stopped").exists and hosts["db4"].file("/tmp/app-started").exists
    replaced = postgres.psql("SELECT datname FROM pg_database WHERE datname LIKE 'app_db4_copy%' ORDER BY 1").split()
    assert replaced[0] == "app_db4_copy" and replaced[1].startswith("app_db4_copy__replaced_")
    for name in replaced:
        postgres.psql('DROP DATABASE "%s"' % name)


def test_restore_takes_the_latest_backup_before_a_time_into_a_new_database(postgres):
    postgres.psql("DROP DATABASE IF EXISTS app_db2_before")
    status, out = playbook("restore.yml", "-l", "db2", "-e", "before=2999-01-01T00:00:00Z", "-e", "target_db=app_db2_before")
    assert status == 0, out
    assert "backup: the latest taken before 2999-01-01T00:00:00Z" in out and "into app_db2_before on db2" in out
    postgres.psql("DROP DATABASE app_db2_before")


def test_restore_refuses_more_than_one_host():
    status, out = playbook("restore.yml", "-e", "confirm=yes")
    assert status != 0 and "Restore one host at a time" in out


def test_health_ends_with_one_table_of_the_fleet_and_fails_at_the_asked_level(services):
    status, out = playbook("health.yml", "-e", "fail_on=warning")
    table = out[out.index('"HOST '):]
    for name, host in services["hosts"].items():
        for db in host["databases"]:
            row = next(line for line in table.splitlines() if '"%s ' % name in line and " %s " % db in line)
            assert "_backup_" in row and ("WARNING" in row or "OK" in row), row
    # the test databases are under the 1 MiB minimum: warnings, so fail_on=warning fails after the table
    assert status != 0 and "Backups at warning or worse" in out


def test_restore_on_a_recipient_mode_host_needs_the_private_key_and_leaves_none_behind(hosts, services, postgres):
    postgres.psql("DROP DATABASE IF EXISTS app_db3_copy")
    status, out = playbook("restore.yml", "-l", "db3", "-e", "target_db=app_db3_copy")
    assert status != 0 and "sealed to recipient(s) %s" % services["hybrid"]["recipient_id"] in out, out
    status, out = playbook("restore.yml", "-l", "db3", "-e", "target_db=app_db3_copy",
                           "-e", "identity_file=%s" % services["hybrid"]["identity_file"])
    assert status == 0, out
    assert "decryption: hybrid-pq, every segment authenticated; metadata signature valid (key qks-" in out
    assert "QKPQ1-SECRET" not in out
    assert sampledb.table_digests(postgres, "app_db3_copy") == sampledb.table_digests(postgres, "app_db3")
    postgres.psql("DROP DATABASE app_db3_copy")
    leftovers = hosts["db3"].run("find /tmp /var/tmp -name '*.identity'")
    assert leftovers.stdout.strip() == ""


def _restore_role_task(out, host):
    """How the pg_backup task that runs `quankey-backup restore-role` ended on ``host`` (ok, changed, skipping, fatal)."""
    out = re.sub(r"\x1b\[[0-9;]*m", "", out)  # Molecule forces colour on
    match = re.search(r"TASK \[quankey\.backup\.pg_backup : Run quankey-backup restore-role as the backup user\]"
                      r"[^\n]*\n(?:[^\n]*\n)*?(ok|changed|skipping|fatal): \[%s\]" % host, out)
    return match.group(1) if match else None


def test_setup_makes_the_restore_role_checks_it_in_check_mode_and_refuses_an_unsafe_one(postgres):
    role_exists = "SELECT count(*) FROM pg_roles WHERE rolname = 'quankey_restore'"
    postgres.psql("DROP ROLE IF EXISTS quankey_restore")
    # check mode: a missing role is a change to come, not a failure, and nothing is created
    status, out = playbook("setup-backups.yml", "--check", "-l", "db1")
    assert status == 0, out
    assert _restore_role_task(out, "db1") == "changed", out
    assert postgres.psql(role_exists).strip() == "0"
    # a role that could leave the database (CREATEROLE) fails the run with the command's words
    postgres.psql("CREATE ROLE quankey_restore NOLOGIN CREATEROLE")
    status, out = playbook("setup-backups.yml", "-l", "db1")
    assert status != 0
    assert "restore role quankey_restore on " in out and "may not run a backup's SQL" in out, out
    assert "ALTER ROLE quankey_restore NOSUPERUSER NOCREATEROLE" in out
    # made plain again, it is accepted as it is
    postgres.psql("ALTER ROLE quankey_restore NOCREATEROLE")
    status, out = playbook("setup-backups.yml", "-l", "db1")
    assert status == 0, out
    assert _restore_role_task(out, "db1") == "ok", out
