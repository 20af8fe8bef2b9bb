# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Issue 16 follow-ups on the real test bed, with two S3 endpoints (the session's moto_server and one started here):
`replicate` backfills a backup whose copy to the replica was cut mid-way (a FaultProxy outage from its first
UploadPart), finds a corrupt replica object only with --verify and copies it again; the replica is pruned by the
retention rules computed on its own listing (`prune --replica`, S3_REPLICA_PRUNE), so a primary emptied by whoever
took the host over empties nothing there. On an IAM-enforcing endpoint, the replica policy the pg_backup role renders
lets a host copy and backfill, and neither delete a wrong copy (replicate says so) nor prune there. The
backup_replicate module does what the command does, and in check mode copies nothing; playbooks/replicate.yml runs it
for each database of a host with the host's env file."""

import datetime
import hashlib
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import boto3
import pytest

from ansible_collections.quankey.backup.plugins.module_utils import config
from ansible_collections.quankey.backup.plugins.module_utils.workflows import backup
from faultproxy import FaultProxy
from hostcommand import ROOT, new_name, run_cli, run_module
from testbed import MotoServer, write_env_file

UTC = datetime.timezone.utc
WINDOW = "3"  # S3_RETRY_WINDOW_SECONDS: a failing endpoint is given up on quickly


@pytest.fixture(scope="module")
def second_moto():
    """A second S3 endpoint: the replica's."""
    with MotoServer() as server:
        yield server


def _bucket(moto, stem):
    return moto.create_bucket("%s-%s" % (stem, uuid.uuid4().hex[:12]))


def _env(testbed, source, **extra):
    return dict(testbed.backup_env(source), S3_PREFIX=new_name("replicate"), BACKUP_HOST_ID="db1",
                S3_RETRY_WINDOW_SECONDS=WINDOW, **extra)


def _sha256(client, bucket, key):
    return hashlib.sha256(client.get_object(Bucket=bucket, Key=key)["Body"].read()).hexdigest()


def _keys(client, bucket, prefix=""):
    return sorted(item["Key"] for item in client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []))


def _replicate(env, *args, check):
    proc = run_cli(env, "replicate", "--json", *args, check=check)
    return json.loads(proc.stdout), proc


def test_a_backup_whose_copy_was_cut_is_backfilled_by_replicate(testbed, source, second_moto):
    replica_bucket = _bucket(second_moto, "quankey-backfill")
    replica = second_moto.client()
    with FaultProxy(second_moto.endpoint_url) as proxy:
        env = _env(testbed, source, S3_REPLICA_BUCKET=replica_bucket, S3_REPLICA_ENDPOINT_URL=proxy.endpoint_url)
        first = json.loads(run_cli(env, "backup", "--json", check=0).stdout)
        assert first["replica"]["status"] == "ok"
        outage = proxy.outage(60, method="PUT", path="partNumber=")  # the replica goes away at its first part
        cut = json.loads(run_cli(env, "backup", "--json", check=0).stdout)
        assert outage.fired.is_set() and cut["replica"]["status"] == "failed"
        proxy.clear()
        proxy.outage(0.1, now=True)  # ends the outage
        assert cut["metadata_key"] not in _keys(replica, replica_bucket)

        dry, proc = _replicate(env, "--dry-run", check=1)  # the replica lacks one: exit 1, nothing copied
        statuses = dict((item["name"], item["status"]) for item in dry["backups"])
        assert statuses == {first["name"]: "present", cut["name"]: "would-copy"}, dry
        assert not dry["complete"] and "WARNING replicate: the replica s3://%s does not hold every good backup (0 failed, " \
            "1 to copy)" % replica_bucket in proc.stderr
        text = run_cli(env, "replicate", "--dry-run", check=1).stdout
        assert "would-copy %s (metadata missing; " % cut["name"] in text and "the replica is INCOMPLETE" in text
        assert cut["metadata_key"] not in _keys(replica, replica_bucket)

        done, proc = _replicate(env, check=0)
        item = [entry for entry in done["backups"] if entry["name"] == cut["name"]][0]
        assert (item["status"], item["metadata"], item["method"]) == ("copied", "missing", "streamed"), item
        assert {"key": cut["object_key"], "problem": "missing"} in item["problems"]
        assert done["complete"] and done["copied"] == 1 and done["present"] == 1
        assert "replicate: %s copied to the replica s3://%s (streamed) and verified" % (cut["name"], replica_bucket) \
            in proc.stderr
    for key in (cut["metadata_key"], cut["object_key"], cut["globals"]["object_key"]):
        assert _sha256(replica, replica_bucket, key) == _sha256(testbed.moto.client(), testbed.bucket, key), key
    env = dict(env, S3_REPLICA_ENDPOINT_URL=second_moto.endpoint_url)
    report = json.loads(run_cli(env, "health", "--json", check=None).stdout)
    assert [finding for finding in report["findings"] if finding["rule"] == "replica"] == []
    again, _proc = _replicate(env, check=0)
    assert again["present"] == 2 and again["copied"] == 0 and not again["changed"]
    assert "the replica holds every good backup" in run_cli(env, "replicate", check=0).stdout
    # what the replica holds is a backup there: verify reads it from the replica's own bucket
    verified = json.loads(run_cli(dict(env, S3_BUCKET=replica_bucket, S3_ENDPOINT_URL=second_moto.endpoint_url),
                                  "verify", "--backup", cut["name"], "--json", check=0).stdout)
    assert verified["checksum_sha256"] == cut["checksum_sha256"] and verified["trusted"]


def test_a_corrupt_replica_object_is_found_with_verify_and_copied_again(testbed, source, second_moto):
    replica_bucket = _bucket(second_moto, "quankey-corrupt")
    env = _env(testbed, source, S3_REPLICA_BUCKET=replica_bucket, S3_REPLICA_ENDPOINT_URL=second_moto.endpoint_url)
    made = json.loads(run_cli(env, "backup", "--json", check=0).stdout)
    replica = second_moto.client()
    data = bytearray(replica.get_object(Bucket=replica_bucket, Key=made["object_key"])["Body"].read())
    data[len(data) // 2] ^= 0x01  # one bit, same size: only the SHA-256 tells
    replica.put_object(Bucket=replica_bucket, Key=made["object_key"], Body=bytes(data))

    plain, _proc = _replicate(env, check=0)  # sizes and metadata only: it looks complete
    assert plain["present"] == 1 and plain["copied"] == 0

    dry, _proc = _replicate(env, "--verify", "--dry-run", check=1)
    problems = dry["backups"][0]["problems"]
    assert dry["backups"][0]["status"] == "would-copy" and [item["key"] for item in problems] == [made["object_key"]]
    assert "the signed metadata says %s" % made["checksum_sha256"] in problems[0]["problem"]

    done, proc = _replicate(env, "--verify", check=0)
    assert done["backups"][0]["status"] == "copied" and done["complete"], done
    assert "deleted the replica's wrong copy" in proc.stderr
    assert _sha256(replica, replica_bucket, made["object_key"]) == made["checksum_sha256"]
    assert _keys(replica, replica_bucket, env["S3_PREFIX"] + "/metadata/") == [made["metadata_key"]]
    checked, _proc = _replicate(env, "--verify", check=0)
    assert checked["present"] == 1 and checked["verify"]


def test_the_replica_is_pruned_by_its_own_listing_not_by_what_the_primary_lost(testbed, source, second_moto):
    replica_bucket = _bucket(second_moto, "quankey-prune")
    env = _env(testbed, source, S3_REPLICA_BUCKET=replica_bucket, S3_REPLICA_ENDPOINT_URL=second_moto.endpoint_url,
               BACKUP_GLOBALS="false", BACKUP_RETENTION_DAYS="1", BACKUP_MIN_KEEP="2")
    settings = config.settings_from_env(env)
    times = [datetime.datetime(2025, 3, day, 3, 0, tzinfo=UTC) for day in (1, 2, 3, 4)]
    made = [backup.run_backup(settings, now=when) for when in times]  # each copied to the replica as it commits
    assert all(item["replica"]["status"] == "ok" for item in made)
    primary, replica = testbed.moto.client(), second_moto.client()
    for item in made:  # the primary emptied, as whoever took the host over could
        for key in (item["metadata_key"], item["object_key"]):
            primary.delete_object(Bucket=testbed.bucket, Key=key)

    plain = json.loads(run_cli(env, "prune", "--json", check=0).stdout)  # S3_REPLICA_PRUNE unset: the primary only
    assert plain["deleted"] == [] and plain["replica"] is None
    dry = json.loads(run_cli(env, "prune", "--replica", "--dry-run", "--json", check=0).stdout)
    assert dry["bucket"] == replica_bucket and dry["deleted"] == [made[1]["name"], made[0]["name"]]
    assert dry["kept"] == [made[3]["name"], made[2]["name"]]
    assert len(_keys(replica, replica_bucket, env["S3_PREFIX"] + "/metadata/")) == 4  # a dry run deletes nothing

    proc = run_cli(dict(env, S3_REPLICA_PRUNE="true"), "prune", check=0)
    assert "replica s3://%s:" % replica_bucket in proc.stdout
    left = _keys(replica, replica_bucket, env["S3_PREFIX"] + "/")
    assert left == sorted([item["metadata_key"] for item in made[2:]] + [item["object_key"] for item in made[2:]])


def _replica_policy(tmp_path, bucket, prefix, prune=False):
    """The replica identity's IAM policy the pg_backup role renders (asked of Ansible from the role's own vars)."""
    result = run_module(tmp_path, "ansible", "localhost", "-m", "ansible.builtin.debug", "-a",
                        "var=_pg_backup_replica_iam_policy", "-e", "@" + str(ROOT / "roles/pg_backup/vars/main.yml"),
                        "-e", json.dumps({"pg_backup_replica_bucket": bucket, "pg_backup_replica_prune": prune,
                                          "pg_backup_host_id": "db1", "pg_backup_s3_prefix": prefix,
                                          "pg_backup_iam_partition": "aws"}))
    return result["_pg_backup_replica_iam_policy"]


def test_the_rendered_replica_policy_copies_and_backfills_but_deletes_nothing(testbed, source, tmp_path):
    bucket, prefix = "replica-iam", new_name("iam")
    policy = _replica_policy(tmp_path, bucket, prefix)
    actions = [action for statement in policy["Statement"] for action in
               ([statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"])]
    assert "s3:DeleteObject" not in actions and "s3:PutObject" in actions
    assert "s3:DeleteObject" in json.dumps(_replica_policy(tmp_path, bucket, prefix, prune=True))
    with MotoServer(initial_no_auth_action_count=7) as server:  # the bucket, two users with a policy and a key each
        server.client("s3").create_bucket(Bucket=bucket)
        iam = server.client("iam")
        keys = {}
        for user, document in (("host", policy), ("admin", {"Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Action": "*", "Resource": "*"}]})):
            iam.create_user(UserName=user)
            iam.put_user_policy(UserName=user, PolicyName=user, PolicyDocument=json.dumps(document))
            key = iam.create_access_key(UserName=user)["AccessKey"]
            keys[user] = (key["AccessKeyId"], key["SecretAccessKey"])
        env = dict(testbed.backup_env(source), S3_PREFIX=prefix, BACKUP_HOST_ID="db1", S3_RETRY_WINDOW_SECONDS=WINDOW,
                   S3_REPLICA_BUCKET=bucket, S3_REPLICA_ENDPOINT_URL=server.endpoint_url,
                   S3_REPLICA_ACCESS_KEY_ID=keys["host"][0], S3_REPLICA_SECRET_ACCESS_KEY=keys["host"][1])
        made = json.loads(run_cli(env, "backup", "--json", check=0).stdout)
        assert made["replica"]["status"] == "ok", made["replica"]  # what a backup's copy needs, the policy allows
        checked, _proc = _replicate(env, "--verify", check=0)
        assert (checked["present"], checked["failed"]) == (1, 0)
        admin = boto3.session.Session(aws_access_key_id=keys["admin"][0], aws_secret_access_key=keys["admin"][1],
                                      region_name="us-east-1").client("s3", endpoint_url=server.endpoint_url)
        admin.put_object(Bucket=bucket, Key=made["object_key"], Body=b"not the backup")
        failed, proc = _replicate(env, check=5)  # the host may not delete the wrong copy: said, nothing changed
        item = failed["backups"][0]
        assert item["status"] == "failed" and "may not delete it" in item["error"] and made["object_key"] in item["error"]
        assert keys["host"][1] not in proc.stdout + proc.stderr
        assert admin.head_object(Bucket=bucket, Key=made["metadata_key"])["ContentLength"] > 0
        denied = run_cli(env, "prune", "--replica", check=5)  # nor prune there
        assert "S3 access denied" in denied.stderr
        repaired, _proc = _replicate(dict(env, S3_REPLICA_ACCESS_KEY_ID=keys["admin"][0],
                                          S3_REPLICA_SECRET_ACCESS_KEY=keys["admin"][1]), check=0)
        assert [entry["status"] for entry in repaired["backups"]] == ["copied"]
        assert hashlib.sha256(admin.get_object(Bucket=bucket, Key=made["object_key"])["Body"].read()).hexdigest() \
            == made["checksum_sha256"]


def test_the_module_backfills_the_replica_and_check_mode_copies_nothing(testbed, source, second_moto, tmp_path):
    replica_bucket = _bucket(second_moto, "quankey-module")
    env = _env(testbed, source, BACKUP_GLOBALS="false")  # the backup made without a replica: the replica lacks it
    made = json.loads(run_cli(env, "backup", "--json", check=0).stdout)
    env_file = tmp_path / "backup.env"
    write_env_file(str(env_file), dict(env, S3_REPLICA_BUCKET=replica_bucket,
                                       S3_REPLICA_ENDPOINT_URL=second_moto.endpoint_url))
    python = "ansible_python_interpreter=%s" % sys.executable
    args = json.dumps({"env_file": str(env_file)})
    planned = run_module(tmp_path, "ansible", "localhost", "-e", python, "--check", "-m",
                         "quankey.backup.backup_replicate", "-a", args)
    assert not planned.get("failed") and not planned["changed"], planned
    assert (planned["would_copy"], planned["backups"][0]["status"]) == (1, "would-copy"), planned
    assert _keys(second_moto.client(), replica_bucket) == []
    done = run_module(tmp_path, "ansible", "localhost", "-e", python, "-m", "quankey.backup.backup_replicate", "-a",
                      json.dumps({"env_file": str(env_file), "verify": True}))
    assert done["changed"] and done["copied"] == 1 and done["complete"] and done["exit_code"] == 0, done
    assert _sha256(second_moto.client(), replica_bucket, made["object_key"]) == made["checksum_sha256"]
    again = run_module(tmp_path, "ansible", "localhost", "-e", python, "-m", "quankey.backup.backup_replicate", "-a",
                       args)
    assert not again["changed"] and again["present"] == 1, again


def test_the_replicate_playbook_backfills_each_database_of_the_host(testbed, source, second_moto, tmp_path):
    replica_bucket = _bucket(second_moto, "quankey-playbook")
    env = _env(testbed, source, BACKUP_GLOBALS="false")
    made = json.loads(run_cli(env, "backup", "--json", check=0).stdout)  # no replica yet: the replica lacks it
    env_file = tmp_path / "backup.env"
    write_env_file(str(env_file), dict(env, S3_REPLICA_BUCKET=replica_bucket,
                                       S3_REPLICA_ENDPOINT_URL=second_moto.endpoint_url))
    install = tmp_path / "install"
    install.mkdir()
    (install / "venv").symlink_to(Path(sys.executable).parent.parent)  # "the engine's virtualenv": this venv
    host_vars = {"ansible_become": False, "pg_backup_install_dir": str(install), "pg_backup_env_file": str(env_file),
                 "pg_backup_databases": [source], "pg_backup_user": os.environ.get("USER", "root")}
    status_check, out_check = _playbook(tmp_path, host_vars, "--check")
    assert status_check == 0, out_check
    assert "holds 0 backup(s) as the primary does, 1 to copy" in out_check
    assert _keys(second_moto.client(), replica_bucket) == []
    status, out = _playbook(tmp_path, dict(host_vars, verify=True))
    assert status == 0, out
    assert "%s: s3://%s holds 0 backup(s) as the primary does, 1 copied" % (source, replica_bucket) in out
    assert _sha256(second_moto.client(), replica_bucket, made["object_key"]) == made["checksum_sha256"]
    assert env["AWS_SECRET_ACCESS_KEY"] not in out


def _playbook(tmp_path, host_vars, *options):
    """playbooks/replicate.yml on localhost (local connection) with this checkout as the collection."""
    collections = tmp_path / "collections" / "ansible_collections" / "quankey"
    if not collections.exists():
        collections.mkdir(parents=True)
        (collections / "backup").symlink_to(ROOT)
    path = tmp_path / "vars.json"
    path.write_text(json.dumps(dict(host_vars, target="all")))
    env = dict((name, value) for name, value in os.environ.items() if not name.startswith(("BACKUP_", "AWS_", "S3_")))
    env.update(ANSIBLE_COLLECTIONS_PATH=str(tmp_path / "collections"), ANSIBLE_NOCOWS="1",
               ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-tmp"), ANSIBLE_RETRY_FILES_ENABLED="false",
               ANSIBLE_PYTHON_INTERPRETER=sys.executable)  # the play's own tasks; the module's is the "engine's"
    proc = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", "-c", "local",
                           "-e", "@%s" % path, str(ROOT / "playbooks" / "replicate.yml")] + list(options), env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, timeout=300,
                          check=False)
    return proc.returncode, proc.stdout
