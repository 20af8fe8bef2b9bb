# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The installed command, run inside each host as cron runs it, backs up to the test S3 endpoint with the
host's own least-privilege keys, and restore brings the data back; the monitor and the runbook work."""

import json
import os
import sys

import pytest

from conftest import ROOT, read_env_file

sys.path.insert(0, str(ROOT / "tests"))
import sampledb  # noqa: E402  pylint: disable=wrong-import-position

RUN_AS_BACKUP_USER = "runuser -u quankey-backup -- "


@pytest.fixture(scope="module", autouse=True)
def _policies(policies_attached):
    return policies_attached


def test_a_scheduled_run_backs_up_every_database(host, hostname, host_vars, services):
    # exactly cron's command line, as cron's user; or the systemd unit's ExecStart, as its User=, output appended alike
    run = host.run(RUN_AS_BACKUP_USER + "sh -c '/usr/local/sbin/quankey-backup-run >> /var/log/quankey/backup.log 2>&1'")
    log = host.file("/var/log/quankey/backup.log").content_string
    assert run.rc == 0, log[-3000:]
    prefix = host_vars.get("pg_backup_s3_prefix", "")
    prefix = prefix + "/" if prefix else ""
    for db in services["hosts"][hostname]["databases"]:
        listing = json.loads(host.check_output("quankey-backup list --json --db %s --details", db))
        latest = listing["backups"][0]
        stem = host_vars.get("pg_backup_name", db)
        assert latest["name"].startswith(stem + "_backup_")
        assert latest["object_key"] == "%sbackups/postgresql/%s/%s/%s.encrypted" % (prefix, hostname, db, latest["name"])
        assert latest["table_count"] == sampledb.TABLE_COUNT
        assert "database %s: prune" % db in log
        for command in ("backup", "prune"):  # each run recorded itself for node_exporter (BACKUP_METRICS_DIR)
            record = host.file("/var/lib/prometheus/node-exporter/quankey_backup_%s_%s.prom" % (command, db))
            assert record.user == "quankey-backup" and record.mode == 0o644
            assert 'quankey_backup_run_last_exit_code{command="%s",host="%s",database="%s"} 0' % (
                command, hostname, db) in record.content_string.splitlines()
    # the log says what happened and holds no secret
    env = read_env_file(host)
    secrets = [name for name in ("PGPASSWORD", "AWS_SECRET_ACCESS_KEY", "BACKUP_ENCRYPTION_KEY", "BACKUP_SIGNING_KEY")
               if name in env]
    assert len(secrets) == 3  # a master key, or (recipient mode) a signing key
    for secret in secrets:
        assert env[secret] not in log


def test_restore_brings_the_data_back(host, hostname, host_vars, services, postgres, instances):
    identity = None
    if host_vars.get("pg_backup_encryption") == "hybrid-pq":
        # the host alone cannot: it holds only the public key
        db = services["hosts"][hostname]["databases"][0]
        out = host.run("quankey-backup restore --db %s --backup latest --target-db %s_denied", db, db)
        assert out.rc == 6, out.stderr
        assert "sealed to recipient(s) %s" % services["hybrid"]["recipient_id"] in out.stderr
        # the operator brings the restore side's private key for the restore
        identity = _bring_identity(instances[hostname], services)
    for db in services["hosts"][hostname]["databases"]:
        target = db + "_verify"
        postgres.psql('DROP DATABASE IF EXISTS "%s"' % target)
        prefix = "BACKUP_IDENTITY_FILE=%s " % identity if identity else ""
        out = host.run(prefix + "quankey-backup restore --json --db %s --backup latest --target-db %s", db, target)
        assert out.rc == 0, out.stderr
        result = json.loads(out.stdout)
        assert result["checksum_ok"] and result["decryption_ok"]
        assert result["table_count"] == result["expected_table_count"] == sampledb.TABLE_COUNT
        assert sampledb.table_digests(postgres, target) == sampledb.table_digests(postgres, db)
        assert result["encryption"] == host_vars.get("pg_backup_encryption", "aes-256-gcm")
        assert result["signature"].startswith("valid") and result["trusted"] is True
        # the archive's SQL ran as the restore role of the env file, through a login dropped afterwards
        assert result["sql_ran_as"] == "quankey_restore"
        assert postgres.psql("SELECT count(*) FROM pg_roles WHERE rolname LIKE 'quankey\\_restore\\_%'").strip() == "0"
        postgres.psql('DROP DATABASE "%s"' % target)
    if identity:
        os.unlink(os.path.join(instances[hostname], identity.lstrip("/")))


def _bring_identity(root, services):
    """Copy the private key into the host (a chroot under ``root``), mode 0600; returns its path inside the host."""
    inside = "/root/restore-identity.key"
    with open(services["hybrid"]["identity_file"], "rb") as source:
        data = source.read()
    fd = os.open(os.path.join(root, inside.lstrip("/")), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as target:
        target.write(data)
    return inside


def test_the_runbooks_restore_command_works_as_written(hosts, postgres):
    text = hosts["db1"].file("/etc/quankey/RESTORE.md").content_string
    command = next(line.strip() for line in text.splitlines()
                   if line.startswith("quankey-backup restore --db app_db1 --backup latest --target-db"))
    postgres.psql("DROP DATABASE IF EXISTS app_db1_restored")
    out = hosts["db1"].run(command)
    assert out.rc == 0, out.stderr
    assert sampledb.table_digests(postgres, "app_db1_restored") == sampledb.table_digests(postgres, "app_db1")
    postgres.psql("DROP DATABASE app_db1_restored")


def test_the_runbooks_complete_loss_command_works_as_written(hosts, postgres):
    """Step 2b of the emergency procedure (--with-globals), as the runbook writes it, restores a lost database in its
    place; the roles its objects need are all on this server already, so it creates none and changes none."""
    text = hosts["db1"].file("/etc/quankey/RESTORE.md").content_string
    command = next(line.strip() for line in text.splitlines()
                   if line.strip().startswith("quankey-backup restore --db app_db1_extra ") and "--with-globals" in line)
    roles = "SELECT rolname, rolsuper, rolcanlogin, coalesce(rolpassword, '-') FROM pg_authid ORDER BY 1"
    before, digests = postgres.psql(roles), sampledb.table_digests(postgres, "app_db1_extra")
    postgres.psql("DROP DATABASE app_db1_extra WITH (FORCE)")  # lost
    out = hosts["db1"].run(command)
    assert out.rc == 0, out.stderr
    assert "roles created: none" in out.stdout and "roles already here (left as they were): " in out.stdout, out.stdout
    assert sampledb.table_digests(postgres, "app_db1_extra") == digests
    assert postgres.psql(roles) == before


def test_the_monitor_writes_status_metrics_and_alerts(host, hostname, host_vars, services):
    run = host.run(RUN_AS_BACKUP_USER + "/usr/bin/python3 /usr/local/sbin/quankey-backup-monitor --config /etc/quankey/monitor.json")
    # the test databases are small: under the 1 MiB minimum they are a warning, unless the host lowered it
    expected = "ok" if host_vars.get("backup_monitor_min_size_bytes", 1048576) < 100000 else "warning"
    assert run.rc == {"ok": 0, "warning": 1}[expected], run.stdout + run.stderr
    status = json.loads(host.file("/var/lib/quankey-backup/health.json").content_string)
    assert status["status"] == expected
    assert [report["database"] for report in status["databases"]] == services["hosts"][hostname]["databases"]
    metrics = host.file("/var/lib/prometheus/node-exporter/quankey_backup.prom")
    assert metrics.mode == 0o644
    for db in services["hosts"][hostname]["databases"]:
        labels = '{host="%s",database="%s"}' % (hostname, db)
        for name in ("quankey_backup_last_success_timestamp_seconds", "quankey_backup_last_size_bytes",
                     "quankey_backup_age_seconds"):
            assert name + labels in metrics.content_string
        assert "quankey_backup_status%s %d" % (labels, {"ok": 0, "warning": 1}[expected]) in metrics.content_string
    alert = host.file("/var/lib/quankey-backup/alert.json")
    if host_vars.get("backup_monitor_alert_command") and expected != "ok":
        assert json.loads(alert.content_string)["status"] == expected
    else:
        assert not alert.exists


def test_a_failed_run_is_recorded_by_the_systemd_failure_hook(host, host_vars):
    if host_vars.get("pg_backup_scheduler") != "systemd":
        pytest.skip("cron has no failure hook")
    # what quankey-backup-failure@quankey-backup.service runs (its ExecStart and User=) when the run failed
    run = host.run(RUN_AS_BACKUP_USER + "/usr/local/sbin/quankey-backup-failed quankey-backup.service")
    assert run.rc == 0, run.stderr
    assert "ERROR run: quankey-backup.service failed" in run.stdout and "health check run with the failure" in run.stdout
    assert "ERROR run: quankey-backup.service failed" in host.file("/var/log/quankey/backup.log").content_string.splitlines()[-1]
    status = json.loads(host.file("/var/lib/quankey-backup/health.json").content_string)
    assert status["status"] == "critical"
    assert all(report["findings"][0]["rule"] == "scheduled-run" for report in status["databases"])
