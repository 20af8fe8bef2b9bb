# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What setup_backups.yml leaves on a host the seed's scripts had set up: one schedule (the role's), the seed's
script moved aside and kept, its env file's values kept where the inventory sets none (and a copy of it kept), its
passphrase kept for its backups, and its log where the role's runs append."""

import hashlib
import re

from conftest import ROOT, read_env_file

SEED_SCRIPT = ROOT / "molecule" / "seed_takeover" / "seed" / "postgres-backup.sh"
SEED_CRON = "0 3 * * * /usr/local/bin/quankey-backup >> /var/log/quankey/backup.log 2>&1"
BACKUP_COMMAND = r"/usr/local/bin/quankey-backup|quankey-backup-run|postgres-backup\.sh"


def _active_cron_lines(host):
    """Every active line of every crontab (users', /etc/crontab, /etc/cron.d) that runs a backup: the seed's
    script, anything at its path, or the role's runner (the monitor's line runs no backup)."""
    files = host.check_output("ls /var/spool/cron/crontabs/* /etc/crontab /etc/cron.d/* 2>/dev/null || true").split()
    lines = []
    for path in files:
        for line in host.file(path).content_string.splitlines():
            if line.strip() and not line.lstrip().startswith("#") and re.search(BACKUP_COMMAND, line):
                lines.append((path, line))
    return lines


def test_exactly_one_schedule_runs_backups_the_roles(host):
    lines = _active_cron_lines(host)
    assert [path for path, _line in lines] == ["/etc/cron.d/quankey-backup"], lines
    assert lines[0][1].endswith("quankey-backup /usr/local/sbin/quankey-backup-run >> /var/log/quankey/backup.log 2>&1")
    assert lines[0][1].startswith("0 3 * * * ")  # the seed's daily 03:00, as pg_backup_schedule's default
    # the seed's line is still there, commented out, for a way back
    root_crontab = host.check_output("crontab -l -u root")
    assert re.search(r"^# disabled by quankey\.backup .*: %s$" % re.escape(SEED_CRON), root_crontab, re.MULTILINE)


def test_the_seeds_script_is_moved_aside_and_kept(host):
    assert host.file("/usr/local/bin/quankey-backup").linked_to == "/opt/quankey-backup/venv/bin/quankey-backup"
    aside = host.check_output("ls /usr/local/bin/quankey-backup.seed-*").split()
    assert len(aside) == 1 and re.match(r"^/usr/local/bin/quankey-backup\.seed-\d{8}$", aside[0])
    kept = host.file(aside[0])
    assert kept.mode == 0o755 and kept.user == "root"
    assert hashlib.sha256(kept.content).hexdigest() == hashlib.sha256(SEED_SCRIPT.read_bytes()).hexdigest()


def test_the_env_file_keeps_the_seeds_values_the_inventory_does_not_set(host, hostname, host_vars, services):
    env_file = host.file("/etc/quankey/backup.env")
    assert env_file.mode == 0o600 and (env_file.user, env_file.group) == ("quankey-backup", "quankey-backup")
    env = read_env_file(host)
    # the seed's: what the inventory leaves unset, and what the seed alone knew
    assert env["BACKUP_RETENTION_DAYS"] == str(host_vars["molecule_seed_retention_days"])
    assert env["DB_NAME"] == services["hosts"][hostname]["databases"][0]
    assert env["PGPASSWORD"] == services["postgres"]["password"]
    assert env["BACKUP_ALERT_EMAIL"] == "dba@example.com"
    # the inventory's: this host's own IAM user and a new master key; the seed's key text opens its backups
    mine = services["hosts"][hostname]
    assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == (mine["access_key"], mine["secret_key"])
    assert env["BACKUP_ENCRYPTION_KEY"] == services["encryption_key"]
    assert env["BACKUP_SEED_PASSPHRASE"] == host_vars["molecule_seed_passphrase"]
    assert env["BACKUP_HOST_ID"] == hostname and env["S3_ENDPOINT_URL"] == services["s3"]["endpoint_url"]


def test_a_copy_of_the_seeds_env_file_is_kept_private(host, host_vars, services):
    copies = host.check_output("ls /etc/quankey/backup.env.seed-*").split()
    assert len(copies) == 1
    copy = host.file(copies[0])
    assert copy.mode == 0o600 and (copy.user, copy.group) == ("root", "root")
    seed = read_env_file(host, copies[0])
    assert seed["BACKUP_ENCRYPTION_KEY"] == host_vars["molecule_seed_passphrase"]
    assert seed["AWS_ACCESS_KEY_ID"] != read_env_file(host)["AWS_ACCESS_KEY_ID"]  # the seed's own IAM user
    assert seed["S3_BUCKET"] == services["s3"]["bucket"]


def test_the_seeds_log_is_kept_and_is_where_the_roles_runs_go(host):
    log = host.file("/var/log/quankey/backup.log")
    assert (log.user, log.mode) == ("quankey-backup", 0o640)
    assert len(re.findall(r"✅ Backup quankey_backup_\d{8}_\d{6} completed", log.content_string)) == 3
    assert "/var/log/quankey/*.log {" in host.file("/etc/logrotate.d/quankey-backup").content_string
