# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What setup_backups.yml leaves on each host: files, modes, owners, cron entries, policy, runbook."""

import hashlib
import json
import os
import subprocess

import pytest

from conftest import read_env_file

PRESETS = {"daily": "0 3 * * *", "12-hour": "0 3,15 * * *", "6-hour": "0 3,9,15,21 * * *"}
RUNNER = "/usr/local/sbin/quankey-backup-run"
USER = "quankey-backup"
RESTORE_ROLE = "quankey_restore"  # pg_backup_restore_role's default


def _key_prefix(host_vars):
    prefix = host_vars.get("pg_backup_s3_prefix", "").strip().strip("/")
    return prefix + "/" if prefix else ""


def test_env_file_is_0600_and_owned_by_the_backup_user(host):
    env_file = host.file("/etc/quankey/backup.env")
    assert env_file.is_file
    assert env_file.mode == 0o600
    assert (env_file.user, env_file.group) == (USER, USER)


def test_env_file_holds_the_seed_variables_and_this_hosts_credentials(host, hostname, host_vars, services):
    env = read_env_file(host)
    mine = services["hosts"][hostname]
    assert env["DB_NAME"] == mine["databases"][0]
    assert env["PGPASSWORD"] == services["postgres"]["password"]
    assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == (mine["access_key"], mine["secret_key"])
    if host_vars.get("pg_backup_encryption") == "hybrid-pq":
        # recipient mode: the public key and the signing key, and no key that opens a backup
        assert env["BACKUP_ENCRYPTION"] == "hybrid-pq" and "BACKUP_ENCRYPTION_KEY" not in env
        assert env["BACKUP_RECIPIENTS"] == services["hybrid"]["public_key"]
        assert env["BACKUP_SIGNING_KEY"] == services["hybrid"]["signing_key"]
        assert "BACKUP_IDENTITY_FILE" not in env and "QKPQ1-SECRET" not in host.file("/etc/quankey/backup.env").content_string
    else:
        assert env["BACKUP_ENCRYPTION"] == "aes-256-gcm"
        assert env["BACKUP_ENCRYPTION_KEY"] == services["encryption_key"]
    assert env["S3_BUCKET"] == services["s3"]["bucket"]
    assert env["BACKUP_HOST_ID"] == hostname
    assert env["PG_BIN_DIR"] == "/usr/lib/postgresql/15/bin"
    for name in ("DB_HOST", "DB_PORT", "DB_USER", "BACKUP_RETENTION_DAYS", "S3_ENDPOINT_URL", "BACKUP_SCHEDULE"):
        assert env[name], name
    assert env["BACKUP_RESTORE_ROLE"] == RESTORE_ROLE
    assert env["BACKUP_GLOBALS"] == "true"  # pg_backup_globals' default: each backup keeps the roles it needs


def test_the_restore_role_is_a_plain_role_that_cannot_log_in(host, postgres):
    # made by the role (quankey-backup restore-role) on the server this host backs up, which the hosts share
    row = postgres.psql("SELECT rolcanlogin, rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls, "
                        "(SELECT count(*) FROM pg_auth_members WHERE member = r.oid) FROM pg_roles r "
                        "WHERE rolname = '%s'" % RESTORE_ROLE).strip()
    assert row == "f|f|f|f|f|f|0"
    # and the host's own command finds it there and safe, changing nothing
    out = host.run("runuser -u %s -- quankey-backup -q restore-role --check --json", USER)
    assert out.rc == 0, out.stderr
    report = json.loads(out.stdout)
    assert (report["role"], report["exists"], report["changed"], report["risks"]) == (RESTORE_ROLE, True, False, [])


def test_the_engine_and_the_matching_postgresql_client_are_installed(host):
    assert host.file("/usr/local/bin/quankey-backup").linked_to == "/opt/quankey-backup/venv/bin/quankey-backup"
    assert host.run("quankey-backup --help").rc == 0
    assert host.package("postgresql-client-15").is_installed
    assert host.check_output("/usr/lib/postgresql/15/bin/pg_dump --version").startswith("pg_dump (PostgreSQL) 15.")
    # the very engine files of the collection under test (create.yml's snapshot of the checkout)
    package = os.path.dirname(host.check_output("/opt/quankey-backup/venv/bin/python -c "
                                                "'import quankey_backup.cli as m; print(m.__file__)'"))
    assert package.startswith("/opt/quankey-backup/venv/lib/python3")
    engine = os.path.join(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "collections", "ansible_collections", "quankey",
                          "backup", "plugins", "module_utils")
    sources = sorted(os.path.relpath(os.path.join(folder, name), engine)
                     for folder, _dirs, names in os.walk(engine) for name in names if name.endswith(".py"))
    assert "cli.py" in sources and "workflows/backup.py" in sources and "formats/modes.py" in sources
    for name in sources:
        with open(os.path.join(engine, name), "rb") as handle:
            assert host.file(os.path.join(package, name)).sha256sum == hashlib.sha256(handle.read()).hexdigest(), name


def test_cron_runs_the_schedule_preset_or_expression_under_the_backup_user(host, hostname, host_vars):
    if host_vars.get("pg_backup_scheduler") == "systemd":
        pytest.skip("scheduled by a systemd timer: test_systemd_timer_runs_the_runner_and_no_cron_line_does")
    schedule = host_vars["pg_backup_schedule"]
    entry = [line for line in host.file("/etc/cron.d/quankey-backup").content_string.splitlines()
             if not line.startswith("#Ansible")]
    assert len(entry) == 1
    line = entry[0]
    job = " %s %s >> /var/log/quankey/backup.log 2>&1" % (USER, RUNNER)
    if schedule == "custom":
        # disabled in this scenario: kept, commented out
        assert line == "#" + host_vars["pg_backup_cron_expression"] + job
        return
    minute, rest = PRESETS[schedule].split(" ", 1)
    splay = host_vars.get("pg_backup_splay_minutes", 0)
    if splay:  # fixed per host: derived from its inventory name
        minute = str(int(hashlib.sha1(hostname.encode()).hexdigest()[:8], 16) % (splay + 1))
    assert line == "%s %s%s" % (minute, rest, job)


ON_CALENDAR = {"daily": "*-*-* 03:00:00", "12-hour": "*-*-* 03,15:00:00", "6-hour": "*-*-* 03,09,15,21:00:00"}
UNITS = "/etc/systemd/system/"


def _unit(host, name):
    """{key: [values]} of a unit file's settings."""
    settings = {}
    for line in host.file(UNITS + name).content_string.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


def test_systemd_timer_runs_the_runner_and_no_cron_line_does(host, hostname, host_vars, instances):
    if host_vars.get("pg_backup_scheduler") != "systemd":
        assert not host.file(UNITS + "quankey-backup.timer").exists and not host.file(UNITS + "quankey-backup.service").exists
        assert not host.file(UNITS + "quankey-backup-monitor.timer").exists
        return
    # no cron entry of the roles, and no cron asked for (prepare.yml removed the image's; here logrotate pulls it in as
    # a dependency, "cron | anacron | cron-daemon | systemd-sysv", which a host booted with systemd meets with systemd-sysv)
    assert host.check_output("apt-mark showmanual cron") == ""
    assert not host.file("/etc/cron.d/quankey-backup").exists and not host.file("/etc/cron.d/quankey-backup-monitor").exists
    service, timer = _unit(host, "quankey-backup.service"), _unit(host, "quankey-backup.timer")
    assert service["Type"] == ["oneshot"] and service["User"] == [USER] and service["ExecStart"] == [RUNNER]
    assert service["OnFailure"] == ["quankey-backup-failure@%n.service"] and service["SuccessExitStatus"] == ["75"]
    assert service["StandardOutput"] == ["append:/var/log/quankey/backup.log"]
    assert service["ReadWritePaths"] == ["/var/lib/quankey-backup /var/log/quankey -/var/lib/prometheus/node-exporter"]
    for key, value in (("NoNewPrivileges", "yes"), ("PrivateTmp", "yes"), ("ProtectSystem", "strict"), ("ProtectHome", "yes")):
        assert service[key] == [value], key
    assert timer["OnCalendar"] == [ON_CALENDAR[host_vars["pg_backup_schedule"]]] and timer["Persistent"] == ["true"]
    assert timer["RandomizedDelaySec"] == ["%dmin" % host_vars["pg_backup_splay_minutes"]]
    assert timer["FixedRandomDelay"] == ["true"]
    failure = _unit(host, "quankey-backup-failure@.service")
    assert failure["ExecStart"] == ["/usr/local/sbin/quankey-backup-failed %i"] and failure["User"] == [USER]
    monitor = _unit(host, "quankey-backup-monitor.service")
    assert monitor["ExecStart"] == ["/usr/bin/python3 /usr/local/sbin/quankey-backup-monitor --config /etc/quankey/monitor.json"]
    assert _unit(host, "quankey-backup-monitor.timer")["OnCalendar"] == ["*:00/30:00"]
    # enabled offline (no systemd runs in a test host): the symlinks systemctl makes, as systemctl itself reads them
    for timer_name in ("quankey-backup.timer", "quankey-backup-monitor.timer"):
        link = host.file(UNITS + "timers.target.wants/" + timer_name)
        assert link.is_symlink and link.linked_to == UNITS + timer_name
        enabled = subprocess.run(["systemctl", "--root=" + instances[hostname], "is-enabled", timer_name],
                                 capture_output=True, text=True, check=False)
        assert enabled.stdout.strip() == "enabled", enabled.stderr
    # systemd's own checks of the units, on the host (its systemd, its user, its runner)
    verify = host.run("systemd-analyze verify %s %s %s %s %s", UNITS + "quankey-backup.service", UNITS + "quankey-backup.timer",
                      UNITS + "quankey-backup-failure@quankey-backup.service", UNITS + "quankey-backup-monitor.service",
                      UNITS + "quankey-backup-monitor.timer")
    assert verify.rc == 0 and verify.stderr.strip() == "" and verify.stdout.strip() == "", verify.stdout + verify.stderr


def test_the_runner_locks_then_backs_up_and_prunes_each_database(host, hostname, services):
    runner = host.file(RUNNER)
    assert runner.mode == 0o755 and runner.user == "root"
    text = runner.content_string
    assert "flock -n 9" in text and "/var/lib/quankey-backup/backup.lock" in text
    for db in services["hosts"][hostname]["databases"]:
        assert db in text
    assert host.file("/var/lib/quankey-backup/backup.lock").user == USER


def test_log_directory_and_logrotate(host):
    log_dir = host.file("/var/log/quankey")
    assert log_dir.is_directory and log_dir.mode == 0o750 and log_dir.user == USER
    assert host.file("/var/log/quankey/backup.log").user == USER
    rotate = host.file("/etc/logrotate.d/quankey-backup")
    assert "/var/log/quankey/*.log" in rotate.content_string
    assert "su quankey-backup quankey-backup" in rotate.content_string
    assert host.package("logrotate").is_installed
    # logrotate's own parser accepts it (debug mode: rotates nothing)
    check = host.run("logrotate -d /etc/logrotate.d/quankey-backup")
    assert check.rc == 0, check.stderr


def test_iam_policy_allows_only_this_hosts_prefixes(host, hostname, host_vars, services):
    policy = json.loads(host.file("/etc/quankey/iam-policy.json").content_string)
    bucket_arn = "arn:aws:s3:::" + services["s3"]["bucket"]
    own = [_key_prefix(host_vars) + "backups/postgresql/%s/" % hostname, _key_prefix(host_vars) + "metadata/%s/" % hostname]
    if host_vars.get("pg_backup_kind", "logical") in ("physical", "both"):  # its archived WAL and base backups too
        own += [_key_prefix(host_vars) + "wal/%s/" % hostname, _key_prefix(host_vars) + "base/%s/" % hostname]
    statements = dict((item["Sid"], item) for item in policy["Statement"])
    assert policy["Version"] == "2012-10-17"
    listing = statements["ListOwnPrefixes"]
    assert (listing["Action"], listing["Resource"]) == ("s3:ListBucket", bucket_arn)
    drills = _key_prefix(host_vars) + "drills/%s/" % hostname
    assert listing["Condition"] == {"StringLike": {"s3:prefix": [prefix + "*" for prefix in own + [drills]]}}
    objects = statements["ReadWriteOwnObjects"]
    assert sorted(objects["Action"]) == ["s3:AbortMultipartUpload", "s3:DeleteObject", "s3:GetObject",
                                         "s3:GetObjectTagging", "s3:PutObject", "s3:PutObjectTagging",
                                         "s3:RestoreObject"]
    assert objects["Resource"] == ["%s/%s*" % (bucket_arn, prefix) for prefix in own]
    # the drill reports of this host's databases: read only
    reports = statements["ReadOwnDrillReports"]
    assert (reports["Action"], reports["Resource"]) == ("s3:GetObject", "%s/%s*" % (bucket_arn, drills))
    # nothing else reaches objects: the other statements are bucket-level only
    assert all(item["Resource"] == bucket_arn for sid, item in statements.items()
               if sid not in ("ReadWriteOwnObjects", "ReadOwnDrillReports"))
    assert all(item["Effect"] == "Allow" for item in policy["Statement"])


def test_runbook_has_this_hosts_values_and_commands(host, hostname, host_vars, services):
    runbook = host.file("/etc/quankey/RESTORE.md")
    assert runbook.mode == 0o644
    text = runbook.content_string
    assert text.startswith("# Restore runbook: %s\n" % hostname)
    assert "s3://%s/%sbackups/postgresql/%s/" % (services["s3"]["bucket"], _key_prefix(host_vars), hostname) in text
    for db in services["hosts"][hostname]["databases"]:
        assert "quankey-backup list --db %s --details" % db in text
        assert "quankey-backup verify --db %s --backup latest" % db in text
        assert "quankey-backup restore --db %s --backup latest --target-db %s_restored" % (db, db) in text
        assert "quankey-backup restore --db %s --backup latest --target-db %s --force" % (db, db) in text
        assert "quankey-backup restore --db %s --backup latest --target-db %s --with-globals" % (db, db) in text
    assert host_vars.get("restore_runbook_app_stop_command", "pm2 stop quankey") in text
    assert host_vars.get("restore_runbook_app_start_command", "pm2 start quankey") in text
    stem = host_vars.get("pg_backup_name", services["hosts"][hostname]["databases"][0])
    assert "--backup %s_backup_20250809_030000" % stem in text
    assert "It runs as the plain role `%s`\n(`BACKUP_RESTORE_ROLE`)" % RESTORE_ROLE in text
    assert "`--as-admin` runs the SQL as `DB_USER` instead. **Risk**" in text and "--allow-seed" in text
    assert "**Complete database loss**, with the roles the backup kept:" in text
    assert "A role that already exists here is left exactly as it is." in text
    assert "quankey-backup restore --host %s --db %s --backup latest --target-db %s --with-globals" % (
        hostname, services["hosts"][hostname]["databases"][0], services["hosts"][hostname]["databases"][0]) in text
    assert services["postgres"]["password"] not in text and services["encryption_key"] not in text
    assert services["hybrid"]["signing_key"] not in text


def test_monitor_is_scheduled_and_configured(host, hostname, host_vars, services):
    if host_vars.get("pg_backup_scheduler") != "systemd":  # else its timer: test_systemd_timer_runs_the_runner_...
        cron = host.file("/etc/cron.d/quankey-backup-monitor").content_string
        assert ("*/30 * * * * %s /usr/bin/python3 /usr/local/sbin/quankey-backup-monitor --config /etc/quankey/monitor.json"
                " >> /var/log/quankey/monitor.log 2>&1") % USER in cron
    config_file = host.file("/etc/quankey/monitor.json")
    assert config_file.mode == 0o640 and config_file.group == USER
    config = json.loads(config_file.content_string)
    assert config["databases"] == services["hosts"][hostname]["databases"]
    assert config["textfile"] == "/var/lib/prometheus/node-exporter/quankey_backup.prom"
