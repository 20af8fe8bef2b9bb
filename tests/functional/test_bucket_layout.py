# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Issue 16 items 2 and 4 on the real test bed.

Hosts that cannot delete, on the IAM-enforcing S3 endpoint (moto_server with INITIAL_NO_AUTH_ACTION_COUNT): the host's
IAM policy is the one the pg_backup role renders with pg_backup_prune=false (asked of Ansible from the role's own
vars), the prune identity's the one playbooks/prepare_bucket.yml writes. The host's keys back up, get AccessDenied on
deleting and on removing an overwritten version of a committed backup, their conditional write over it is refused, and
their prune is denied without deleting anything; playbooks/prune.yml, run for real with the prune identity's keys,
prunes and tags the monthly keepers the bucket's lifecycle rules archive.

The bucket: playbooks/prepare_bucket.yml through ansible-playbook against moto sets Block Public Access, default
encryption, versioning, Object Lock and the lifecycle rules; a second run changes nothing; --check changes nothing
and says what it would.

Archived backups: a backup whose data object is in GLACIER starts its S3 restore on `restore` and says when to come
back; run again once the restore is done (moto's is at once), it restores. (A run while the restore is under way:
test_storage.py.)"""

import datetime
import json
import sys
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from ansible_collections.quankey.backup.plugins.module_utils import config
from ansible_collections.quankey.backup.plugins.module_utils.adapters.s3 import S3Store
from ansible_collections.quankey.backup.plugins.module_utils.errors import ConflictError
from ansible_collections.quankey.backup.plugins.module_utils.workflows import backup
from hostcommand import ROOT, new_name, run_cli, run_module
from testbed import MotoServer

UTC = datetime.timezone.utc
BUCKET = "layout"
HOST = "db1"
# made-up times of the host's backups -> their fate under RULES
TIMES = {"2025-02-20 03:00": "keep", "2025-02-05 03:00": "delete", "2025-01-20 03:00": "keep",
         "2025-01-10 03:00": "delete"}
RULES = {"BACKUP_RETENTION_DAYS": "1", "BACKUP_MIN_KEEP": "1", "BACKUP_KEEP_MONTHLY": "2"}
# requests moto answers before enforcing IAM: the bucket and its versioning, three users with a policy and a key each
FREE_REQUESTS = 11
PYTHON = sys.executable  # the modules run on the controller, with this venv's boto3


def _at(text):
    return datetime.datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=UTC)


def _ansible_var(tmp_path, name, *extra):
    result = run_module(tmp_path, "ansible", "localhost", "-m", "ansible.builtin.debug", "-a", "var=" + name, *extra)
    assert name in result, result
    return result[name]


def _host_policy(tmp_path):
    """The IAM policy the pg_backup role renders for a host that cannot delete (pg_backup_prune=false)."""
    return _ansible_var(tmp_path, "_pg_backup_iam_policy", "-e", "@" + str(ROOT / "roles/pg_backup/vars/main.yml"),
                        "-e", json.dumps({"pg_backup_prune": False, "pg_backup_host_id": HOST, "pg_backup_s3_prefix": "",
                                          "pg_backup_s3_bucket": BUCKET, "pg_backup_iam_partition": "aws",
                                          "pg_backup_iam_extra_statements": []}))


def _prune_policy(tmp_path):
    """The prune identity's policy, as playbooks/prepare_bucket.yml writes it."""
    out = tmp_path / "policy"
    out.mkdir()
    result = run_module(tmp_path, "ansible", "localhost", "-m", "ansible.builtin.template", "-a",
                        "src=%s dest=%s" % (ROOT / "playbooks/templates/iam-prune-identity.json.j2",
                                            out / "iam-prune-identity.json"),
                        "-e", json.dumps({"prepare_bucket_name": BUCKET, "prepare_bucket_s3_prefix": "",
                                          "prepare_bucket_iam_partition": "aws", "ansible_python_interpreter": PYTHON}))
    assert result.get("changed"), result
    return json.loads((out / "iam-prune-identity.json").read_text())


def _client(server, keys):
    return boto3.session.Session(aws_access_key_id=keys[0], aws_secret_access_key=keys[1], region_name="us-east-1").client(
        "s3", endpoint_url=server.endpoint_url, config=Config(s3={"addressing_style": "path"}))


def _denied(call):
    with pytest.raises(ClientError) as caught:
        call()
    assert caught.value.response["Error"]["Code"] == "AccessDenied", caught.value.response
    return True


@pytest.fixture(scope="module")
def iam_bed(testbed, source, tmp_path_factory):
    """An IAM-enforcing S3 endpoint with a versioned bucket; the host's, the prune identity's and an admin's keys; the
    host's backups of TIMES, taken with the host's keys."""
    tmp = tmp_path_factory.mktemp("layout")
    host_policy, prune_policy = _host_policy(tmp), _prune_policy(tmp)
    actions = [action for statement in host_policy["Statement"] for action in
               ([statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"])]
    assert "s3:DeleteObject" not in actions and "s3:AbortMultipartUpload" in actions
    with MotoServer(initial_no_auth_action_count=FREE_REQUESTS) as server:
        s3 = server.client("s3")
        s3.create_bucket(Bucket=BUCKET)
        s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        iam = server.client("iam")
        keys = {}
        for user, policy in (("host", host_policy), ("pruner", prune_policy),
                             ("admin", {"Version": "2012-10-17",
                                        "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]})):
            iam.create_user(UserName=user)
            iam.put_user_policy(UserName=user, PolicyName=user, PolicyDocument=json.dumps(policy))
            key = iam.create_access_key(UserName=user)["AccessKey"]
            keys[user] = (key["AccessKeyId"], key["SecretAccessKey"])
        env = dict(testbed.backup_env(source), S3_BUCKET=BUCKET, S3_ENDPOINT_URL=server.endpoint_url,
                   AWS_ACCESS_KEY_ID=keys["host"][0], AWS_SECRET_ACCESS_KEY=keys["host"][1], BACKUP_HOST_ID=HOST,
                   BACKUP_GLOBALS="false", **RULES)
        settings = config.settings_from_env(env)
        taken = dict((when, backup.run_backup(settings, now=_at(when))) for when in TIMES)
        yield {"server": server, "keys": keys, "env": env, "taken": taken, "tmp": tmp}


def test_a_host_that_cannot_delete_backs_up_but_cannot_delete_overwrite_or_prune(iam_bed):
    server, keys, taken = iam_bed["server"], iam_bed["keys"], iam_bed["taken"]
    host = _client(server, keys["host"])
    newest = taken["2025-02-20 03:00"]
    assert host.head_object(Bucket=BUCKET, Key=newest["metadata_key"])["ContentLength"] > 0  # the backups are there
    assert _denied(lambda: host.delete_object(Bucket=BUCKET, Key=newest["metadata_key"]))
    assert _denied(lambda: host.delete_object(Bucket=BUCKET, Key=newest["object_key"]))
    # the engine's writes are conditional: an overwrite of a committed backup is refused
    store = S3Store(BUCKET, endpoint_url=server.endpoint_url, access_key=keys["host"][0], secret_key=keys["host"][1],
                    region="us-east-1")
    with pytest.raises(ConflictError):
        store.put_bytes(newest["metadata_key"], b"{}", if_none_match=True)
    # a raw overwrite (a taken-over host need not ask for the condition) leaves the committed version in the versioned
    # bucket, and the host may not remove it
    host.put_object(Bucket=BUCKET, Key=newest["object_key"] + ".planted", Body=b"x")
    versions = _client(server, keys["admin"]).list_object_versions(Bucket=BUCKET, Prefix=newest["metadata_key"])
    version = versions["Versions"][0]["VersionId"]
    assert _denied(lambda: host.delete_object(Bucket=BUCKET, Key=newest["metadata_key"], VersionId=version))
    # the host's own prune is denied, and deletes nothing
    proc = run_cli(iam_bed["env"], "prune", check=5)
    assert "S3 access denied" in proc.stderr and keys["host"][1] not in proc.stderr
    listed = json.loads(run_cli(iam_bed["env"], "list", "--json", check=0).stdout)
    assert sorted(item["name"] for item in listed["backups"]) == sorted(item["name"] for item in taken.values())


def test_the_prune_identity_prunes_with_the_playbook_and_tags_the_monthly_keepers(iam_bed, tmp_path):
    server, keys, taken, env = iam_bed["server"], iam_bed["keys"], iam_bed["taken"], iam_bed["env"]
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(json.dumps({"databases": {"hosts": {HOST: {
        "ansible_connection": "local", "ansible_python_interpreter": PYTHON, "pg_backup_s3_bucket": BUCKET, "pg_backup_s3_endpoint_url": server.endpoint_url,
        "pg_backup_s3_region": "us-east-1", "pg_backup_databases": [env["DB_NAME"]],
        "pg_backup_encryption_key": env["BACKUP_ENCRYPTION_KEY"], "pg_backup_retention_days": 1,
        "pg_backup_min_keep": 1, "pg_backup_keep_monthly": 2}}}}))
    secrets = json.dumps({"prune_aws_access_key_id": keys["pruner"][0], "prune_aws_secret_access_key": keys["pruner"][1],
                          "prune_command": str(ROOT / ".venv/bin/quankey-backup"),
                          "ansible_python_interpreter": PYTHON})  # prune runs delegated to localhost
    dry, rc = run_module(tmp_path, "ansible-playbook", "-i", str(inventory), str(ROOT / "playbooks/prune.yml"),
                         "-e", secrets, "-e", "dry_run=true", whole=True)
    assert rc == 0, json.dumps(dry["plays"][0]["tasks"][-1])
    assert keys["pruner"][1] not in json.dumps(dry)
    admin = _client(server, keys["admin"])

    def names():
        found = admin.list_objects_v2(Bucket=BUCKET, Prefix="metadata/")
        return sorted(item["Key"] for item in found.get("Contents", []))
    assert names() == sorted(item["metadata_key"] for item in taken.values())  # the dry run deleted nothing
    report, rc = run_module(tmp_path, "ansible-playbook", "-i", str(inventory), str(ROOT / "playbooks/prune.yml"),
                            "-e", secrets, whole=True)
    assert rc == 0, report
    assert names() == sorted(taken[when]["metadata_key"] for when, fate in TIMES.items() if fate == "keep")
    for when, fate in TIMES.items():
        if fate == "keep":
            tags = admin.get_object_tagging(Bucket=BUCKET, Key=taken[when]["object_key"])["TagSet"]
            assert tags == [{"Key": "quankey-keep", "Value": "monthly"}]
    shown = [item.get("msg", "") for task in report["plays"][0]["tasks"] for host in task["hosts"].values()
             for item in host.get("results", [])]
    assert any("deleted " in msg and taken["2025-02-05 03:00"]["name"] in msg for msg in shown), shown
    assert keys["pruner"][1] not in json.dumps(report)


def _failed(report):
    """The failed tasks' results, for an assertion's message."""
    return [host for task in report["plays"][0]["tasks"] for host in task["hosts"].values() if host.get("failed")]


def _prepare(tmp_path, moto, *extra):
    return run_module(tmp_path, "ansible-playbook", str(ROOT / "playbooks/prepare_bucket.yml"),
                      "-e", "prepare_bucket_endpoint_url=" + moto.endpoint_url, "-e", "ansible_python_interpreter=" + PYTHON,
                      "-e", "prepare_bucket_aws_cli=" + str(Path(PYTHON).parent / "aws"), *extra, whole=True)


def test_prepare_bucket_sets_the_bucket_up_once_and_check_mode_changes_nothing(moto, tmp_path, monkeypatch):
    # the controller's own credentials, as an administrator has them (run_module passes no AWS_* variable on)
    home = tmp_path / "home"
    (home / ".aws").mkdir(parents=True)
    (home / ".aws" / "credentials").write_text("[default]\naws_access_key_id = %s\naws_secret_access_key = %s\n"
                                               % (moto.access_key, moto.secret_key))
    (home / ".aws" / "config").write_text("[default]\nregion = %s\n" % moto.region)
    monkeypatch.setenv("HOME", str(home))
    name = new_name("prepared").replace("_", "-")
    args = ("-e", "prepare_bucket_name=" + name, "-e", "prepare_bucket_object_lock=true",
            "-e", "prepare_bucket_archive_class=DEEP_ARCHIVE", "-e", "prepare_bucket_archive_days=90",
            "-e", "prepare_bucket_noncurrent_days=60")

    def changed(report):
        return report["stats"]["localhost"]["changed"]
    checked, rc = _prepare(tmp_path, moto, "--check", *args)
    assert rc == 0 and changed(checked) > 0, _failed(checked)
    s3 = moto.client("s3")
    assert name not in [bucket["Name"] for bucket in s3.list_buckets()["Buckets"]]  # --check created nothing
    first, rc = _prepare(tmp_path, moto, *args)
    assert rc == 0 and changed(first) > 0, _failed(first)
    block = s3.get_public_access_block(Bucket=name)["PublicAccessBlockConfiguration"]
    assert all(block[field] for field in ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy",
                                          "RestrictPublicBuckets"))
    rules = s3.get_bucket_encryption(Bucket=name)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    assert s3.get_bucket_versioning(Bucket=name)["Status"] == "Enabled"
    assert s3.get_object_lock_configuration(Bucket=name)["ObjectLockConfiguration"]["ObjectLockEnabled"] == "Enabled"
    lifecycle = dict((rule["ID"], rule) for rule in s3.get_bucket_lifecycle_configuration(Bucket=name)["Rules"])
    assert lifecycle["quankey-abort-incomplete-uploads"]["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 1}
    for keeper in ("monthly", "yearly"):
        rule = lifecycle["quankey-archive-" + keeper]
        assert rule["Filter"]["And"]["Tags"] == [{"Key": "quankey-keep", "Value": keeper}]
        assert rule["Transitions"] == [{"Days": 90, "StorageClass": "DEEP_ARCHIVE"}]
    assert lifecycle["quankey-expire-noncurrent"]["NoncurrentVersionExpiration"]["NoncurrentDays"] == 60
    again, rc = _prepare(tmp_path, moto, *args)
    assert rc == 0 and changed(again) == 0, again
    checked, rc = _prepare(tmp_path, moto, "--check", *args)
    assert rc == 0 and changed(checked) == 0, checked
    drifted, rc = _prepare(tmp_path, moto, "--check", *args[:2], "-e", "prepare_bucket_versioning=false")
    assert rc == 0 and changed(drifted) > 0, drifted
    said = [host.get("msg", "") for task in drifted["plays"][0]["tasks"] for host in task["hosts"].values()]
    assert any("versioning" in msg for msg in said), said
    assert s3.get_bucket_versioning(Bucket=name)["Status"] == "Enabled"  # said, not done


def test_an_archived_backup_starts_its_restore_and_says_when_to_come_back(testbed, source, s3):
    env = dict(testbed.backup_env(source), S3_PREFIX=new_name("archived"), BACKUP_GLOBALS="false",
               S3_RESTORE_TIER="Bulk")
    taken = json.loads(run_cli(env, "backup", "--json", check=0).stdout)
    key = taken["object_key"]
    s3.copy_object(Bucket=testbed.bucket, Key=key, CopySource={"Bucket": testbed.bucket, "Key": key},
                   StorageClass="GLACIER", MetadataDirective="COPY")
    target = new_name("archived")
    first = run_cli(env, "restore", "--target-db", target, check=5)
    assert "archived in GLACIER" in first.stderr and "restore was started now (tier Bulk" in first.stderr
    assert "5-12 hours" in first.stderr and "Traceback" not in first.stderr and "InvalidObjectState" not in first.stderr
    # moto completes a restore request at once (S3 takes the hours the message says): the second run restores
    assert "expiry-date" in s3.head_object(Bucket=testbed.bucket, Key=key)["Restore"]
    second = run_cli(env, "restore", "--target-db", target, check=0)
    assert "is archived in" not in second.stderr
    assert target in testbed.pg.psql("SELECT datname FROM pg_database", db="postgres").split()
