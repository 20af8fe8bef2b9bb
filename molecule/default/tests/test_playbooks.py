# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The operators' playbooks against the converged hosts: backup-now, restore (with its confirmation and
the application stop/start), and health's fleet table."""

import os
import subprocess
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "tests"))
import sampledb  # noqa: E402  pylint: disable=wrong-import-position


@pytest.fixture(scope="module", autouse=True)
def _policies(policies_attached):
    return policies_attached


def playbook(name, *args):
    """Run playbooks/<name> on the scenario's inventory; returns (exit status, output)."""
    command = ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], str(ROOT / "playbooks" / name), *args]
    done = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=600, check=False, env=dict(os.environ, ANSIBLE_NOCOLOR="1"))
    return done.returncode, done.stdout


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
