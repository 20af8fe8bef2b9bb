# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Issue 16 item 3 on the real test bed: S3 Object Lock and versioned buckets, against moto_server.

A bucket created with ObjectLockEnabledForBucket=True (versioning is on then): backups written with
BACKUP_OBJECT_LOCK_MODE=governance (and compliance) have every object locked; deleting the data object's version with
the host's credentials is refused (AccessDenied), and prune keeps the old backup it would otherwise delete, saying until
when. A plain bucket refuses such a backup before anything is uploaded. In a versioned bucket, a delete that leaves a
delete marker: `list --include-deleted` shows the backup as deleted, `restore --backup <name>` refuses naming
`undelete`, `undelete` brings it back (checked) and the restore then works.

What moto does not enforce (seen with moto 5.2): it keeps no lock given on CreateMultipartUpload (the engine then locks
the stored version with PutObjectRetention, which it checks for: see adapters/s3.py ensure_locked); it lets
BypassGovernanceRetention through without checking s3:BypassGovernanceRetention; it lets a compliance lock be
shortened; it takes lock parameters on CreateMultipartUpload in a bucket without Object Lock (AWS refuses them)."""

import datetime
import json
import uuid

import botocore.exceptions
import pytest

from ansible_collections.quankey.backup.plugins.module_utils import config
from ansible_collections.quankey.backup.plugins.module_utils.workflows import backup
from hostcommand import new_name, run_cli

UTC = datetime.timezone.utc


def _at(text):
    return datetime.datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=UTC)


@pytest.fixture(scope="module")
def locked_bucket(testbed):
    return testbed.moto.create_bucket("quankey-lock-%s" % uuid.uuid4().hex[:12], ObjectLockEnabledForBucket=True)


@pytest.fixture(scope="module")
def versioned_bucket(testbed):
    name = testbed.moto.create_bucket("quankey-versioned-%s" % uuid.uuid4().hex[:12])
    testbed.moto.client().put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    return name


def _env(testbed, source, bucket, **extra):
    return dict(testbed.backup_env(source), S3_BUCKET=bucket, S3_PREFIX=new_name("lock"), BACKUP_HOST_ID="db1",
                **extra)


def _version(s3, bucket, key):
    return s3.head_object(Bucket=bucket, Key=key)


@pytest.mark.parametrize("mode", ["governance", "compliance"])
def test_a_locked_backup_cannot_be_deleted_by_its_host_and_prune_keeps_it_saying_until_when(
        testbed, source, s3, locked_bucket, mode):
    env = _env(testbed, source, locked_bucket, BACKUP_OBJECT_LOCK_MODE=mode, BACKUP_OBJECT_LOCK_DAYS="3",
               BACKUP_RETENTION_DAYS="1", BACKUP_MIN_KEEP="1")
    settings = config.settings_from_env(env)
    old = backup.run_backup(settings, now=_at("2026-01-01 03:00"))  # no rule keeps it: only its lock
    made = json.loads(run_cli(env, "backup", "--json", check=0).stdout)
    assert made["object_lock"]["mode"] == mode and made["object_lock"]["days"] == 3
    soon = datetime.datetime.now(UTC) + datetime.timedelta(days=3)
    globals_key = made["globals"]["object_key"]
    for key in (made["object_key"], made["metadata_key"], globals_key, old["object_key"]):
        head = _version(s3, locked_bucket, key)
        assert head["ObjectLockMode"] == mode.upper(), key
        assert abs((head["ObjectLockRetainUntilDate"] - soon).total_seconds()) < 600, key

    data = _version(s3, locked_bucket, old["object_key"])
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        s3.delete_object(Bucket=locked_bucket, Key=old["object_key"], VersionId=data["VersionId"])
    assert refused.value.response["Error"]["Code"] == "AccessDenied"
    if mode == "compliance":  # no one may bypass a compliance lock
        with pytest.raises(botocore.exceptions.ClientError) as refused:
            s3.delete_object(Bucket=locked_bucket, Key=old["object_key"], VersionId=data["VersionId"],
                             BypassGovernanceRetention=True)
        assert refused.value.response["Error"]["Code"] == "AccessDenied"

    dry = json.loads(run_cli(env, "prune", "--dry-run", "--json", check=0).stdout)
    fate = next(item for item in dry["backups"] if item["name"] == old["name"])
    until = _version(s3, locked_bucket, old["metadata_key"])["ObjectLockRetainUntilDate"].astimezone(UTC)
    assert fate["fate"] == "keep" and fate["locked_until"] == until.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert fate["rules"] == ["locked until %s" % fate["locked_until"]]
    text = run_cli(env, "prune", "--dry-run", check=0).stdout
    assert "keep    %s  locked until %s" % (old["name"], fate["locked_until"]) in text
    report = json.loads(run_cli(env, "health", "--json").stdout)
    assert not [item for item in report["findings"] if item["rule"] == "object_lock"], report["findings"]
    done = json.loads(run_cli(env, "prune", "--json", check=0).stdout)
    assert done["deleted"] == [] and old["name"] in done["kept"]
    assert s3.head_object(Bucket=locked_bucket, Key=old["metadata_key"])["ContentLength"] > 0


def test_a_bucket_without_object_lock_fails_the_backup_before_anything_is_uploaded(testbed, source, s3):
    env = _env(testbed, source, testbed.bucket, BACKUP_OBJECT_LOCK_MODE="governance", BACKUP_OBJECT_LOCK_DAYS="7")
    failed = run_cli(env, "backup", check=3)
    assert "has no Object Lock, and BACKUP_OBJECT_LOCK_MODE asks" in failed.stderr
    assert "object-lock-enabled-for-bucket" in failed.stderr
    assert s3.list_objects_v2(Bucket=testbed.bucket, Prefix=env["S3_PREFIX"]).get("KeyCount", 0) == 0
    assert not s3.list_multipart_uploads(Bucket=testbed.bucket, Prefix=env["S3_PREFIX"]).get("Uploads")


def test_a_delete_marker_hides_nothing_and_undelete_brings_the_backup_back(testbed, source, s3, versioned_bucket):
    env = _env(testbed, source, versioned_bucket)
    made = json.loads(run_cli(env, "backup", "--json", check=0).stdout)
    name = made["name"]
    for key in (made["metadata_key"], made["object_key"], made["globals"]["object_key"]):
        s3.delete_object(Bucket=versioned_bucket, Key=key)  # no version: a delete marker, as prune or a person leaves

    assert name not in run_cli(env, "list", check=0).stdout
    listed = json.loads(run_cli(env, "list", "--include-deleted", "--json", check=0).stdout)
    item = next(item for item in listed["backups"] if item["name"] == name)
    assert sorted(item["deleted"]["objects"]) == sorted([made["metadata_key"], made["object_key"],
                                                         made["globals"]["object_key"]])
    assert item["object_size"] == made["size_bytes"]
    text = run_cli(env, "list", "--include-deleted", check=0).stdout
    assert "DELETED" in text and "quankey-backup undelete %s" % name in text

    refused = run_cli(env, "restore", "--backup", name, check=8)
    assert "was deleted" in refused.stderr and "quankey-backup undelete %s" % name in refused.stderr

    dry = json.loads(run_cli(env, "undelete", name, "--dry-run", "--json", check=0).stdout)
    assert dry["markers_removed"] == 3 and name not in run_cli(env, "list", check=0).stdout
    done = json.loads(run_cli(env, "undelete", name, "--json", check=0).stdout)
    assert done["markers_removed"] == 3 and done["signature"].startswith("valid")
    assert done["size_bytes"] == made["size_bytes"]
    listed = json.loads(run_cli(env, "list", "--include-deleted", "--json", check=0).stdout)
    assert next(item for item in listed["backups"] if item["name"] == name)["deleted"] is None

    target = new_name("undeleted")
    restored = json.loads(run_cli(env, "restore", "--backup", name, "--target-db", target, "--json", check=0).stdout)
    assert restored["name"] == name and restored["table_count"] == made["table_count"]
    testbed.pg.drop_database(target)


def test_undelete_refuses_when_a_version_is_gone_and_leaves_the_markers(testbed, source, s3, versioned_bucket):
    env = _env(testbed, source, versioned_bucket, BACKUP_GLOBALS="false")
    made = json.loads(run_cli(env, "backup", "--json", check=0).stdout)
    data = _version(s3, versioned_bucket, made["object_key"])["VersionId"]
    s3.delete_object(Bucket=versioned_bucket, Key=made["metadata_key"])
    s3.delete_object(Bucket=versioned_bucket, Key=made["object_key"])
    s3.delete_object(Bucket=versioned_bucket, Key=made["object_key"], VersionId=data)  # gone for good
    refused = run_cli(env, "undelete", made["name"], check=8)
    assert "has no version left" in refused.stderr and "nothing was changed" in refused.stderr
    versions = s3.list_object_versions(Bucket=versioned_bucket, Prefix=made["metadata_key"])
    assert [marker["IsLatest"] for marker in versions.get("DeleteMarkers", [])] == [True]
