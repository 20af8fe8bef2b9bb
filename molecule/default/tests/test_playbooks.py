# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The operators' playbooks against the converged hosts, by their collection names (quankey.backup.<name>): backup_now,
restore (with its confirmation and the application stop/start) and health run the modules on each host as its backup
user (sudo) with the engine's Python and the host's env file; and setup_backups' restore role (check mode, an unsafe
role)."""

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
    lock = hosts["db3"].file("/var/lib/quankey-backup/backup.lock")
    hosts["db3"].run("rm -f %s" % lock.path)  # the module makes it again, as the user it runs as
    status, out = playbook("quankey.backup.backup_now", "-l", "db3", "-e", "prune=true")
    assert status == 0, out
    assert "app_db3: app_db3_backup_" in out and "6 tables" in out and "pruned 0 backup(s) past retention" in out
    # the module ran as the backup user (become_user), under the run lock the scheduled runs take
    assert lock.exists and (lock.user, lock.mode) == ("quankey-backup", 0o600)
    assert hosts["db3"].check_output("quankey-backup list --json") != before


def test_restore_asks_before_replacing_and_stops_nothing_unconfirmed(hosts, postgres):
    postgres.psql("DROP DATABASE IF EXISTS app_db4_copy")
    postgres.psql("CREATE DATABASE app_db4_copy")
    status, out = playbook("quankey.backup.restore", "-l", "db4", "-e", "target_db=app_db4_copy", "-e", "replace=true",
                           "-e", "app_stop=true")
    assert status != 0 and "Not confirmed" in out, out
    assert not hosts["db4"].file("/tmp/app-stopped").exists
    assert postgres.psql("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'", db="app_db4_copy").strip() == "0"


def test_restore_replaces_with_the_application_stopped_and_reports_the_verification(hosts, postgres):
    status, out = playbook("quankey.backup.restore", "-l", "db4", "-e", "backup=latest", "-e", "target_db=app_db4_copy",
                           "-e", "replace=true", "-e", "app_stop=true", "-e", "confirm=yes")
    assert status == 0, out
    assert "into app_db4_copy on db4" in out
    assert "tables: 6 restored, 6 in the backup" in out and "matches the metadata" in out
    assert "its SQL runs as: the restore role quankey_restore (BACKUP_RESTORE_ROLE)" in out
    assert "SQL ran as: quankey_restore" in out
    # replace=true: with_globals is off unless asked, so the roles are not touched
    assert "roles: none created or changed (replace=true: the roles are expected to be here)" in out
    assert "roles created:" not in out
    assert "is kept as app_db4_copy__replaced_" in out
    assert hosts["db4"].file("/tmp/app-stopped").exists and hosts["db4"].file("/tmp/app-started").exists
    replaced = postgres.psql("SELECT datname FROM pg_database WHERE datname LIKE 'app_db4_copy%' ORDER BY 1").split()
    assert replaced[0] == "app_db4_copy" and replaced[1].startswith("app_db4_copy__replaced_")
    for name in replaced:
        postgres.psql('DROP DATABASE "%s"' % name)


def test_restore_takes_the_latest_backup_before_a_time_into_a_new_database(postgres):
    postgres.psql("DROP DATABASE IF EXISTS app_db2_before")
    status, out = playbook("quankey.backup.restore", "-l", "db2", "-e", "before=2999-01-01T00:00:00Z", "-e", "target_db=app_db2_before")
    assert status == 0, out
    assert "(the latest taken before 2999-01-01T00:00:00Z) of host db2, database app_db2" in out, out
    assert "into app_db2_before on db2" in out and "tables: 6 restored, 6 in the backup" in out
    # a new database, nothing replaced: with_globals by default; the roles are all on this server, none created
    assert "roles: created where this server lacks them, existing roles left as they are" in out
    assert "roles created: none" in out and "roles already here (left as they were): " in out
    postgres.psql("DROP DATABASE app_db2_before")


def test_restore_refuses_more_than_one_host():
    status, out = playbook("quankey.backup.restore", "-e", "confirm=yes")
    assert status != 0 and "Restore one host at a time" in out


def test_health_ends_with_every_hosts_report_lines_and_fails_at_the_asked_level(services):
    status, out = playbook("quankey.backup.health", "-e", "fail_on=warning")
    summary = out[out.index("TASK [Summarize the fleet"):]
    for name, host in services["hosts"].items():
        for db in host["databases"]:
            line = next(line for line in summary.splitlines()
                        if ": backups of %s on %s in s3://%s" % (db, name, services["s3"]["bucket"]) in line)
            assert '"WARNING: ' in line or '"OK: ' in line, line
    assert summary.count("  latest: ") == sum(len(host["databases"]) for host in services["hosts"].values())
    # the test databases are under the 1 MiB minimum: warnings, so fail_on=warning fails each host after the summary
    assert status != 0
    for name in services["hosts"]:
        assert "Backups of %s at warning or worse, or not checked" % name in out
    status, out = playbook("quankey.backup.health")
    assert status == 0, out


def test_restore_on_a_recipient_mode_host_needs_the_private_key_and_leaves_none_behind(hosts, services, postgres):
    postgres.psql("DROP DATABASE IF EXISTS app_db3_copy")
    status, out = playbook("quankey.backup.restore", "-l", "db3", "-e", "target_db=app_db3_copy")
    assert status != 0 and "sealed to recipient(s) %s" % services["hybrid"]["recipient_id"] in out, out
    status, out = playbook("quankey.backup.restore", "-l", "db3", "-e", "target_db=app_db3_copy",
                           "-e", "identity_file=%s" % services["hybrid"]["identity_file"])
    assert status == 0, out
    assert "decryption: hybrid-pq, verified; metadata signature valid (key qks-" in out
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


def test_setup_makes_the_restore_role_checks_it_in_check_mode_refuses_an_unsafe_one_and_switches_schedulers(hosts, postgres):
    role_exists = "SELECT count(*) FROM pg_roles WHERE rolname = 'quankey_restore'"
    postgres.psql("DROP ROLE IF EXISTS quankey_restore")
    # check mode: a missing role is a change to come, not a failure, and nothing is created
    status, out = playbook("setup_backups.yml", "--check", "-l", "db1")
    assert status == 0, out
    assert _restore_role_task(out, "db1") == "changed", out
    assert postgres.psql(role_exists).strip() == "0"
    # a role that could leave the database (CREATEROLE) fails the run with the command's words
    postgres.psql("CREATE ROLE quankey_restore NOLOGIN CREATEROLE")
    status, out = playbook("setup_backups.yml", "-l", "db1")
    assert status != 0
    assert "restore role quankey_restore on " in out and "may not run a backup's SQL" in out, out
    assert "ALTER ROLE quankey_restore NOSUPERUSER NOCREATEROLE" in out
    postgres.psql("ALTER ROLE quankey_restore NOCREATEROLE")

    # One run switches both ways (the extra variable is templated per host): db1, on cron (the default), to systemd
    # timers, and db2, on systemd timers (molecule.yml), to cron; only the chosen scheduler's entries are left. In the
    # same run db1's restore role, made plain again, is accepted as it is.
    db1, db2, units = hosts["db1"], hosts["db2"], "/etc/systemd/system/"
    timers = [units + "timers.target.wants/quankey-backup.timer", units + "timers.target.wants/quankey-backup-monitor.timer"]
    unit_files = [units + name for name in ("quankey-backup.service", "quankey-backup.timer", "quankey-backup-failure@.service",
                                            "quankey-backup-monitor.service", "quankey-backup-monitor.timer")]
    cron_files = ["/etc/cron.d/quankey-backup", "/etc/cron.d/quankey-backup-monitor"]
    assert all(db1.file(path).exists for path in cron_files) and not [path for path in timers if db1.file(path).exists]
    assert all(db2.file(path).is_symlink for path in timers) and not [path for path in cron_files if db2.file(path).exists]
    status, out = playbook("setup_backups.yml", "-l", "db1,db2", "-e",
                           '{"pg_backup_scheduler": "{{ \'systemd\' if inventory_hostname == \'db1\' else \'cron\' }}"}')
    assert status == 0, out
    assert _restore_role_task(out, "db1") == "ok", out
    # db1, from cron to systemd: the cron lines go, the timers are enabled
    assert not [path for path in cron_files if db1.file(path).exists]
    assert all(db1.file(path).is_symlink for path in timers) and all(db1.file(path).exists for path in unit_files)
    # db2, from systemd to cron: the timers, units and failure hook go, the cron lines come
    assert not [path for path in timers + unit_files + ["/usr/local/sbin/quankey-backup-failed"] if db2.file(path).exists]
    assert "quankey-backup /usr/local/sbin/quankey-backup-run >> /var/log/quankey/backup.log 2>&1" in db2.file(
        "/etc/cron.d/quankey-backup").content_string
    assert "/usr/local/sbin/quankey-backup-monitor" in db2.file("/etc/cron.d/quankey-backup-monitor").content_string
