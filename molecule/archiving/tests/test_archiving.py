# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""WAL archiving set up by the pg_backup role (pg_backup_kind: both) on a host with its own PostgreSQL 17 server, and
point-in-time recovery there: PostgreSQL runs wal-push as the postgres OS user with the host's least-privilege keys,
and restore --pitr brings back exactly the rows committed before a moment; the base backups the role schedules run as
cron runs them."""

import json
import time

import boto3
import pytest

from conftest import playbook, read_env_file

DB = "app_pg17"
RESTORED = "/var/lib/postgresql/restored"


@pytest.fixture(scope="module", autouse=True)
def _policies(policies_attached):
    return policies_attached


def _bucket(services):
    s3 = services["s3"]
    return boto3.client("s3", endpoint_url=s3["endpoint_url"], region_name=s3["region"],
                        aws_access_key_id=s3["admin_access_key"], aws_secret_access_key=s3["admin_secret_key"]), s3["bucket"]


def _wait_archived(pg17, name):
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        row = pg17.psql("SELECT coalesce(last_archived_wal, ''), failed_count, coalesce(last_failed_wal, '') "
                        "FROM pg_stat_archiver").strip().split("|")
        if row[0] >= name:
            return row
        time.sleep(0.5)
    raise AssertionError("PostgreSQL did not archive %s: pg_stat_archiver says %s" % (name, row))


def _now(pg17):
    return pg17.psql("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')").strip()


def test_the_role_set_archiving_with_alter_system_and_reported_the_restart_it_needs(hosts, pg17):
    host = hosts["pg17"]
    assert pg17.psql("SHOW archive_mode").strip() == "off"  # the running server: no restart was allowed
    # what the files hold (postgresql.auto.conf last): on at the next start
    assert pg17.psql("SELECT setting FROM pg_file_settings WHERE name = 'archive_mode' ORDER BY seqno DESC "
                     "LIMIT 1").strip() == "on"
    command = pg17.psql("SELECT setting FROM pg_file_settings WHERE name = 'archive_command' ORDER BY seqno DESC "
                        "LIMIT 1").strip()  # SHOW says (disabled) while archive_mode is off
    assert "/opt/quankey-backup/venv/bin/quankey-backup" in command and "wal-push" in command and "%p" in command
    env_file = host.file("/etc/quankey/wal.env")
    assert env_file.user == "postgres" and env_file.mode == 0o600
    wal_env = read_env_file(host, "/etc/quankey/wal.env")
    assert "PGPASSWORD" not in wal_env and wal_env["BACKUP_HOST_ID"] == "pg17"
    assert read_env_file(host)["WAL_ARCHIVING"] == "true"


def test_postgres_archives_with_wal_push_and_pitr_restores_the_rows_before_a_moment(hosts, pg17, services):
    host = hosts["pg17"]
    restarted = host.run("pg_ctlcluster 17 main restart")  # what the role's RESTART PENDING asks the operator to do
    assert restarted.rc == 0, restarted.stderr
    assert pg17.psql("SHOW archive_mode").strip() == "on"
    pg17.psql("CREATE TABLE ledger (id int PRIMARY KEY, batch text NOT NULL)", db=DB)
    pg17.psql("INSERT INTO ledger SELECT g, 'before-base' FROM generate_series(1, 20) g", db=DB)
    first = pg17.psql("SELECT pg_walfile_name(pg_switch_wal())").strip()
    archived, failed, _last_failed = _wait_archived(pg17, first)
    assert failed == "0", "archive_command failed: %s" % host.run("tail -n 20 /var/log/postgresql/*.log").stdout
    s3, bucket = _bucket(services)
    stored = s3.get_object(Bucket=bucket, Key="wal/pg17/%s/%s" % (archived[:8], archived))["Body"].read()
    assert stored[:4] == b"QKWL"  # an encrypted, signed WAL object, pushed by PostgreSQL as the postgres OS user

    # archiving on and no base backup in the bucket: the role takes the host's first one itself (its runner, as
    # postgres), once - it leaves a marker, and later runs of the role take none
    assert not json.loads(host.check_output("quankey-backup list --json"))["base_backups"]
    status, out = playbook("setup_backups.yml", "-l", "pg17")
    assert status == 0, out
    listed = json.loads(host.check_output("quankey-backup list --json"))["base_backups"]
    assert len(listed) == 1, out
    assert "INFO run: base backup done (exit 0)" in host.file("/var/log/quankey/backup.log").content_string
    assert host.file("/var/lib/quankey-backup/base-initial.done").exists
    time.sleep(1.2)
    pg17.psql("INSERT INTO ledger SELECT g, 'one' FROM generate_series(21, 40) g", db=DB)
    time.sleep(0.5)
    between = _now(pg17)
    time.sleep(0.5)
    pg17.psql("INSERT INTO ledger SELECT g, 'two' FROM generate_series(41, 60) g", db=DB)
    _wait_archived(pg17, pg17.psql("SELECT pg_walfile_name(pg_switch_wal())").strip())

    done = host.run("quankey-backup restore --pitr --data-dir %s --target-time %s --target-action pause --no-archive "
                    "--json", RESTORED, between)
    assert done.rc == 0, done.stderr
    result = json.loads(done.stdout)
    try:
        assert result["base_backup"] == listed[0]["name"] and result["reached"]["state"] == "paused"
        assert host.file(RESTORED).user == "postgres" and host.file(RESTORED).mode == 0o700
        assert not host.file(RESTORED + "/postgresql.conf").exists  # Debian's configuration lives in /etc
        rows = host.check_output("psql -X -At -h %s -p %s -U postgres -d %s -c %s", result["socket_dir"],
                                 str(result["port"]), DB, "SELECT batch, count(*) FROM ledger GROUP BY 1 ORDER BY 1")
        assert rows.split() == ["before-base|20", "one|20"]
    finally:
        host.run("runuser -u postgres -- /usr/lib/postgresql/17/bin/pg_ctl stop -D %s -m fast -w", RESTORED)
        host.run("rm -rf %s %s %s", RESTORED, result.get("spool_dir", "/nonexistent"),
                 result.get("socket_dir", "/nonexistent"))


def test_the_scheduled_base_backup_runs_as_cron_runs_it_and_list_and_verify_see_it(hosts, pg17):
    host = hosts["pg17"]
    entry = [line for line in host.file("/etc/cron.d/quankey-backup-base").content_string.splitlines()
             if line.strip() and not line.startswith("#")]
    assert len(entry) == 1, entry
    minute, hour, day, month, weekday, user, job = entry[0].split(None, 6)
    assert (minute, hour, day, month, weekday, user) == ("30", "1", "*", "*", "0", "postgres")  # weekly: Sunday 01:30
    assert job == "/usr/local/sbin/quankey-backup-base-run >> /var/log/quankey/backup.log 2>&1"
    assert "basebackup --fast" in host.file("/usr/local/sbin/quankey-backup-base-run").content_string
    assert host.file("/etc/quankey/wal.env").user == "postgres"
    assert read_env_file(host, "/etc/quankey/wal.env")["DB_HOST"] == "/var/run/postgresql"  # the socket, peer
    assert "quankey-backup" in host.check_output("id -nG postgres").split()  # the log, the lock, the metrics
    lock, log_file = host.file("/var/lib/quankey-backup/base.lock"), host.file("/var/log/quankey/backup.log")
    assert (lock.user, lock.mode) == ("postgres", 0o600)
    assert (log_file.user, log_file.group, log_file.mode) == ("quankey-backup", "quankey-backup", 0o660)
    assert "create 0660 quankey-backup quankey-backup" in host.file("/etc/logrotate.d/quankey-backup").content_string
    before = set(base["name"] for base in json.loads(host.check_output("quankey-backup list --json"))["base_backups"])

    # as cron runs the line: as postgres (its groups), /bin/sh from its home, cron's bare environment
    ran = host.run("cd ~postgres && runuser -u postgres -- env -i HOME=/var/lib/postgresql LOGNAME=postgres "
                   "SHELL=/bin/sh PATH=/usr/bin:/bin /bin/sh -c %s", job)
    log = host.file("/var/log/quankey/backup.log").content_string
    assert ran.rc == 0, ran.stderr + log[-3000:]
    assert "INFO run: base backup of the cluster" in log and "INFO run: base backup done (exit 0)" in log
    # then the physical kind's prune (pg_backup_prune), from this runner: the dumps' runs prune only the dumps
    assert "INFO run: prune of the base backups and the archived WAL" in log
    assert "prune --kind logical" in host.file("/usr/local/sbin/quankey-backup-run").content_string

    listed = json.loads(host.check_output("quankey-backup list --json"))["base_backups"]
    new = [base["name"] for base in listed if base["name"] not in before]
    assert len(new) == 1, listed
    verified = host.run("quankey-backup verify --backup %s", new[0])
    assert verified.rc == 0, verified.stdout + verified.stderr
    # recorded as the dumps' runs are (the monitoring kit's QuankeyBackupJobFailed watches its exit code)
    record = json.loads(host.file("/var/lib/prometheus/node-exporter/quankey_backup_basebackup_all.json").content_string)
    assert (record["command"], record["host"], record["exit_code"], record["state"]) == ("basebackup", "pg17", 0, "ended")
    pruned = json.loads(host.file("/var/lib/prometheus/node-exporter/quankey_backup_prune_all.json").content_string)
    assert (pruned["command"], pruned["exit_code"], pruned["state"]) == ("prune", 0, "ended")


def test_the_systemd_scheduler_has_a_base_timer_physical_removes_the_dumps_and_logical_the_base_backups_schedule(hosts):
    # last: the host keeps only its dumps' schedule (the scenario ends here)
    host, units = hosts["pg17"], "/etc/systemd/system/"
    base_units = [units + "quankey-backup-base.service", units + "quankey-backup-base.timer"]
    enabled = units + "timers.target.wants/quankey-backup-base.timer"
    status, out = playbook("setup_backups.yml", "-l", "pg17", "-e", "pg_backup_scheduler=systemd")
    assert status == 0, out
    assert not host.file("/etc/cron.d/quankey-backup-base").exists  # one schedule: the timer, enabled offline here
    assert all(host.file(path).exists for path in base_units) and host.file(enabled).is_symlink
    service = host.file(units + "quankey-backup-base.service").content_string
    assert "User=postgres" in service and "ExecStart=/usr/local/sbin/quankey-backup-base-run" in service
    assert "OnFailure=quankey-backup-failure@%n.service" in service  # a failed one reaches the owner as a dump's does
    assert "OnCalendar=Sun *-*-* 01:30:00" in host.file(units + "quankey-backup-base.timer").content_string

    # physical: base backups and archived WAL only - the dumps' timer, service and runner go, the base timer stays;
    # health judges the host by its base and wal rules, and backup_now takes a base backup instead of dumps
    dump_units = [units + "quankey-backup.service", units + "quankey-backup.timer",
                  units + "timers.target.wants/quankey-backup.timer", "/usr/local/sbin/quankey-backup-run"]
    status, out = playbook("setup_backups.yml", "-l", "pg17", "-e", "pg_backup_scheduler=systemd",
                           "-e", "pg_backup_kind=physical")
    assert status == 0, out
    assert not [path for path in dump_units + ["/etc/cron.d/quankey-backup"] if host.file(path).exists]
    assert all(host.file(path).exists for path in base_units) and host.file(enabled).is_symlink
    assert host.file(units + "quankey-backup-failure@.service").exists  # the base service's failure hook
    assert read_env_file(host)["BACKUP_KIND"] == "physical"
    runbook = host.file("/etc/quankey/RESTORE.md").content_string  # no dump restore to point the reader at
    assert "**This host makes no dumps**" in runbook and "restore --db app_pg17" not in runbook
    report = json.loads(host.run("quankey-backup health --json").stdout)
    assert not [item for item in report["findings"] if item["rule"] in ("no_backups", "age", "frequency")], report
    assert report["base"]["count"] >= 1 and report["status"] != "critical", report["findings"]
    before = len(json.loads(host.check_output("quankey-backup list --json"))["base_backups"])
    status, out = playbook("quankey.backup.backup_now", "-l", "pg17", "-e", "prune=true", "-e", "pg_backup_kind=physical")
    assert status == 0 and "base backup cluster_base_" in out, out
    assert len(json.loads(host.check_output("quankey-backup list --json"))["base_backups"]) == before + 1

    status, out = playbook("setup_backups.yml", "-l", "pg17", "-e", "pg_backup_scheduler=systemd",
                           "-e", "pg_backup_kind=logical")
    assert status == 0, out
    assert not [path for path in base_units + [enabled, "/etc/cron.d/quankey-backup-base",
                                               "/usr/local/sbin/quankey-backup-base-run"] if host.file(path).exists]
    assert "quankey-backup" not in host.check_output("id -nG postgres").split()
    assert host.file("/var/log/quankey/backup.log").mode == 0o640  # no other user appends to it now
    assert host.file(units + "timers.target.wants/quankey-backup.timer").is_symlink  # the dumps are scheduled again
