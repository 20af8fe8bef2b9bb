# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Issue 18 item 5 (part): the IAM policy the pg_backup role renders for a host of pg_backup_kind physical (asked of
Ansible from the role's own vars) reaches its own base/<host>/ and wal/<host>/ and no other host's; on the
IAM-enforcing S3 endpoint (moto_server with INITIAL_NO_AUTH_ACTION_COUNT) the host's keys push WAL, take a real base
backup and prune both, and are denied every object of another host's base backups and WAL."""

import datetime
import json
import sys

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from ansible_collections.quankey.backup.plugins.module_utils import config
from ansible_collections.quankey.backup.plugins.module_utils.workflows import basebackup
from hostcommand import ROOT, run_cli, run_module
from testbed import MotoServer

UTC = datetime.timezone.utc
BUCKET = "waliam"
HOST = "db1"
FREE_REQUESTS = 7  # moto answers these before enforcing IAM: the bucket, then two users with a policy and a key each
PYTHON = sys.executable


def _policy(tmp_path, kind, prefix=""):
    """The host IAM policy the pg_backup role renders for ``kind``."""
    result = run_module(tmp_path, "ansible", "localhost", "-m", "ansible.builtin.debug", "-a", "var=_pg_backup_iam_policy",
                        "-e", "@" + str(ROOT / "roles/pg_backup/vars/main.yml"),
                        "-e", json.dumps({"pg_backup_prune": True, "pg_backup_host_id": HOST,
                                          "pg_backup_s3_prefix": prefix, "pg_backup_s3_bucket": BUCKET,
                                          "pg_backup_iam_partition": "aws", "pg_backup_iam_extra_statements": [],
                                          "pg_backup_kind": kind, "pg_backup_object_lock_mode": ""}))
    assert "_pg_backup_iam_policy" in result, result
    return result["_pg_backup_iam_policy"]


def _client(server, keys):
    return boto3.session.Session(aws_access_key_id=keys[0], aws_secret_access_key=keys[1], region_name="us-east-1").client(
        "s3", endpoint_url=server.endpoint_url, config=Config(s3={"addressing_style": "path"}))


def _denied(call):
    with pytest.raises(ClientError) as caught:
        call()
    assert caught.value.response["Error"]["Code"] == "AccessDenied", caught.value.response
    return True


def test_the_policy_of_a_physical_host_reaches_its_own_base_and_wal_prefixes_only(tmp_path):
    arn = "arn:aws:s3:::" + BUCKET
    physical = dict((item["Sid"], item) for item in _policy(tmp_path, "physical", "/prod/")["Statement"])
    own = ["prod/backups/postgresql/db1/", "prod/metadata/db1/", "prod/wal/db1/", "prod/base/db1/"]
    assert physical["ReadWriteOwnObjects"]["Resource"] == ["%s/%s*" % (arn, prefix) for prefix in own]
    assert "s3:DeleteObject" in physical["ReadWriteOwnObjects"]["Action"]  # prune deletes there (pg_backup_prune)
    assert physical["ListOwnPrefixes"]["Condition"]["StringLike"]["s3:prefix"] == [
        prefix + "*" for prefix in own + ["prod/drills/db1/"]]
    logical = dict((item["Sid"], item) for item in _policy(tmp_path, "logical", "/prod/")["Statement"])
    assert logical["ReadWriteOwnObjects"]["Resource"] == ["%s/%s*" % (arn, prefix) for prefix in own[:2]]


@pytest.fixture(scope="module")
def iam_bed(testbed, tmp_path_factory):
    host_policy = _policy(tmp_path_factory.mktemp("walpolicy"), "physical")
    with MotoServer(initial_no_auth_action_count=FREE_REQUESTS) as server:
        server.client("s3").create_bucket(Bucket=BUCKET)
        iam = server.client("iam")
        keys = {}
        for user, policy in (("host", host_policy), ("admin", {"Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Action": "*", "Resource": "*"}]})):
            iam.create_user(UserName=user)
            iam.put_user_policy(UserName=user, PolicyName=user, PolicyDocument=json.dumps(policy))
            key = iam.create_access_key(UserName=user)["AccessKey"]
            keys[user] = (key["AccessKeyId"], key["SecretAccessKey"])
        env = dict(testbed.backup_env("postgres"), S3_BUCKET=BUCKET, S3_ENDPOINT_URL=server.endpoint_url,
                   AWS_ACCESS_KEY_ID=keys["host"][0], AWS_SECRET_ACCESS_KEY=keys["host"][1], BACKUP_HOST_ID=HOST,
                   BACKUP_RETENTION_DAYS="1", BACKUP_MIN_KEEP="1", S3_RETRY_WINDOW_SECONDS="2")
        yield {"server": server, "keys": keys, "env": env}


def test_the_host_archives_backs_up_and_prunes_its_own_and_reaches_no_other_hosts(iam_bed, tmp_path):
    server, keys, env = iam_bed["server"], iam_bed["keys"], iam_bed["env"]
    settings = config.settings_from_env(env)
    old = basebackup.run_basebackup(settings, now=datetime.datetime.now(UTC) - datetime.timedelta(days=10),
                                    fast_checkpoint=True)
    new = json.loads(run_cli(env, "basebackup", "--fast", "--json", check=0).stdout)
    before = "%s%016X" % (old["start_wal_file"][:8], int(old["start_wal_file"][8:], 16) - 1)
    for name in (before, new["start_wal_file"]):
        (tmp_path / name).write_bytes(b"synthetic WAL " + name.encode())
        run_cli(env, "wal-push", str(tmp_path / name), check=0)
    pruned = json.loads(run_cli(env, "prune", "--json", check=0).stdout)
    assert (pruned["base_deleted"], pruned["wal_deleted"], pruned["wal_kept"]) == ([old["name"]], 1, 1)
    admin = _client(server, keys["admin"])
    left = sorted(item["Key"] for item in admin.list_objects_v2(Bucket=BUCKET).get("Contents", []))
    assert left == sorted(["base/db1/%s.meta" % new["name"], "base/db1/%s.tar.enc" % new["name"],
                           "wal/db1/%s/%s" % (new["start_wal_file"][:8], new["start_wal_file"])])

    # another host's base backups and WAL: the host's keys may neither write, read nor delete them
    others = ["base/db2/cluster_base_20261201_030000.meta", "wal/db2/00000001/000000010000000000000003",
              "base/db10/cluster_base_20261201_030000.meta", "wal/db1x/00000001/000000010000000000000003"]
    host = _client(server, keys["host"])
    for key in others:
        admin.put_object(Bucket=BUCKET, Key=key, Body=b"x")
        assert _denied(lambda key=key: host.put_object(Bucket=BUCKET, Key=key, Body=b"y"))
        assert _denied(lambda key=key: host.get_object(Bucket=BUCKET, Key=key))
        assert _denied(lambda key=key: host.delete_object(Bucket=BUCKET, Key=key))
    assert host.get_object(Bucket=BUCKET, Key="base/db1/%s.meta" % new["name"])["Body"].read()  # its own: yes
