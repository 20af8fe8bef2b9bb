# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The restore_drill role on a chroot test host: its env file, its PostgreSQL client, its schedule; the scheduled drill
(the runner, as cron runs it) and playbooks/drill.yml restore db1's backup with drill1's own keys, which may read the
fleet's backups and write drill reports and nothing else; and the role refuses a drill server without room."""

import json
import re
from pathlib import Path

import boto3
import pytest

from conftest import playbook, read_env_file

RUN_AS_BACKUP_USER = "runuser -u quankey-backup -- "
ENV_FILE = "/etc/quankey/drill.env"
HERE = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def _policies(services, hosts):
    """db1: the policy its pg_backup role rendered. drill1: list the bucket, read every object, write under drills/."""
    iam = boto3.client("iam", endpoint_url=services["s3"]["endpoint_url"], region_name=services["s3"]["region"],
                       aws_access_key_id=services["s3"]["admin_access_key"],
                       aws_secret_access_key=services["s3"]["admin_secret_key"])
    bucket = "arn:aws:s3:::%s" % services["s3"]["bucket"]
    drill_policy = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": bucket},
        {"Effect": "Allow", "Action": "s3:GetObject", "Resource": bucket + "/*"},
        {"Effect": "Allow", "Action": "s3:PutObject", "Resource": bucket + "/drills/*"}]}
    documents = {"db1": hosts["db1"].file("/etc/quankey/iam-policy.json").content_string,
                 "drill1": json.dumps(drill_policy)}
    for name, document in documents.items():
        iam.put_user_policy(UserName=services["hosts"][name]["iam_user"], PolicyName="quankey-backup",
                            PolicyDocument=document)


def _reports(admin_s3, services):
    listing = admin_s3.list_objects_v2(Bucket=services["s3"]["bucket"], Prefix="drills/")
    return sorted(item["Key"] for item in listing.get("Contents", []))


def _scratch_databases(postgres):
    return postgres.psql("SELECT datname FROM pg_database WHERE datname LIKE 'quankey_drill%'").split()


@pytest.fixture(scope="module")
def backed_up(hosts):
    """db1's scheduled run, as cron runs it: its backup is what the drills restore."""
    run = hosts["db1"].run(RUN_AS_BACKUP_USER + "sh -c '/usr/local/sbin/quankey-backup-run >> /var/log/quankey/backup.log 2>&1'")
    assert run.rc == 0, hosts["db1"].file("/var/log/quankey/backup.log").content_string[-3000:]
    return json.loads(hosts["db1"].check_output("quankey-backup list --json --db app_db1"))["backups"][0]["name"]


def test_the_drill_host_has_its_settings_client_and_schedule(hosts, services):
    drill = hosts["drill1"]
    env_file = drill.file(ENV_FILE)
    assert (env_file.user, env_file.group, env_file.mode) == ("quankey-backup", "quankey-backup", 0o600)
    env = read_env_file(drill, ENV_FILE)
    assert env["DB_HOST"] == services["postgres"]["host"] and env["BACKUP_HOST_ID"] == "drill1"
    assert env["PG_BIN_DIR"] == "/usr/lib/postgresql/15/bin" and drill.file(env["PG_BIN_DIR"] + "/pg_restore").is_file
    assert json.loads(env["DRILL_ASSERTIONS"]) == ["SELECT count(*) > 0 FROM customers"]
    assert env["AWS_ACCESS_KEY_ID"] == services["hosts"]["drill1"]["access_key"]
    assert "DB_NAME" not in env  # a drill host backs nothing up
    assert drill.file("/usr/local/bin/quankey-backup").is_symlink
    cron = drill.file("/etc/cron.d/quankey-drill").content_string
    assert ("0 5 * * 0 quankey-backup /usr/local/sbin/quankey-drill-run --splay 1800 >> /var/log/quankey/drill.log 2>&1"
            in cron), cron
    assert drill.file("/usr/local/sbin/quankey-drill-run").mode == 0o755
    # the restore role the drills' SQL runs as is there, a plain role
    role = json.loads(drill.check_output(RUN_AS_BACKUP_USER + "quankey-backup --env-file %s -q restore-role --check --json",
                                         ENV_FILE))
    assert role["exists"] is True and role["risks"] == []


def test_a_scheduled_drill_restores_the_newest_backup_and_stores_its_report(hosts, backed_up, admin_s3, services,
                                                                            postgres):
    drill = hosts["drill1"]
    before = _reports(admin_s3, services)
    # the systemd unit's ExecStart (no splay: the timer has it), as its User=, output appended as cron's is
    run = drill.run(RUN_AS_BACKUP_USER + "sh -c '/usr/local/sbin/quankey-drill-run >> /var/log/quankey/drill.log 2>&1'")
    log = drill.file("/var/log/quankey/drill.log").content_string
    assert run.rc == 0, log[-3000:]
    assert "PASSED db1/app_db1 %s: RTO " % backed_up in log, log  # quankey-backup drill's line
    new = [key for key in _reports(admin_s3, services) if key not in before]
    assert len(new) == 1 and new[0].startswith("drills/db1/app_db1/"), new
    report = json.loads(admin_s3.get_object(Bucket=services["s3"]["bucket"], Key=new[0])["Body"].read())
    assert report["result"] == "passed" and report["backup"] == backed_up
    assert any(check["ok"] and "customers" in json.dumps(check) for check in report["checks"]), report["checks"]
    assert _scratch_databases(postgres) == []
    env = read_env_file(drill, ENV_FILE)
    for name in ("PGPASSWORD", "AWS_SECRET_ACCESS_KEY", "BACKUP_ENCRYPTION_KEY"):
        assert env[name] not in log
    # the run is recorded for node_exporter (restore_drill_metrics_dir): a failed or killed drill run alerts
    prom = drill.file(env["BACKUP_METRICS_DIR"] + "/quankey_backup_drill_all.prom")
    assert prom.is_file and prom.user == "quankey-backup", env["BACKUP_METRICS_DIR"]
    assert 'quankey_backup_run_last_exit_code{command="drill",host="drill1",database="all"} 0\n' in prom.content_string


def test_the_splay_sleeps_a_random_time_within_its_bound_first(hosts):
    run = hosts["drill1"].run("sh -c 'sed -n \"/--splay/,/^fi/p\" /usr/local/sbin/quankey-drill-run > /tmp/splay.sh; "
                              "set -- --splay 2; now() { date; }; . /tmp/splay.sh'")
    assert run.rc == 0, run.stderr
    delay = int(run.stdout.split("starting in ")[1].split("s")[0])
    assert 0 <= delay <= 2


def test_the_drill_playbook_prints_the_fleet_table(backed_up, admin_s3, services):
    before = _reports(admin_s3, services)
    status, out = playbook("quankey.backup.drill")
    assert status == 0, out
    lines = [line.strip().rstrip(",") for line in re.sub(r"\x1b\[[0-9;]*m", "", out).splitlines()]  # colour per line
    header = next(number for number, line in enumerate(lines) if line.startswith('"HOST ') and line.endswith('RESULT"'))
    row = json.loads(lines[header + 1]).split()
    assert row[:3] == ["db1", "app_db1", backed_up] and row[-1] == "passed", out
    assert len(_reports(admin_s3, services)) == len(before) + 1
    # check mode: the plan, nothing drilled
    status, out = playbook("quankey.backup.drill", "--check")
    assert status == 0, out
    assert backed_up in out
    assert len(_reports(admin_s3, services)) == len(before) + 1


def test_a_drill_server_without_room_is_refused_before_anything_changes(hosts):
    status, out = playbook(str(HERE / "drill_host.yml"), "-e", "restore_drill_min_free_bytes=1000000000000000000")
    assert status != 0
    assert "under restore_drill_min_free_bytes=1000000000000000000" in out, out
    assert "Free space, move the data directory" in out
    assert "changed=0" in out
