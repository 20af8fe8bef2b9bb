# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Issue 16 item 5 on the real test bed: a second copy of each backup in a replica bucket (S3_REPLICA_*).

Two S3 endpoints (the session's moto_server and a second one started here): a backup is streamed to a replica on the
other endpoint and verified, or copied server-side to a replica bucket on its own endpoint; the replica's endpoint cut
mid-copy (a FaultProxy outage from its first UploadPart) leaves the backup committed on the primary, the result and
`health` say the replica failed; with the primary's endpoint stopped, `restore` and `verify` read the backup from the
replica and say so."""

import hashlib
import json
import uuid

import pytest

from faultproxy import FaultProxy
from hostcommand import new_name, run_cli
from testbed import MotoServer

WINDOW = "3"  # S3_RETRY_WINDOW_SECONDS: a failing endpoint is given up on quickly


@pytest.fixture(scope="module")
def second_moto():
    """A second S3 endpoint: the replica's."""
    with MotoServer() as server:
        yield server


def _bucket(moto, stem):
    return moto.create_bucket("%s-%s" % (stem, uuid.uuid4().hex[:12]))


def _env(testbed, source, **extra):
    return dict(testbed.backup_env(source), S3_PREFIX=new_name("replica"), BACKUP_HOST_ID="db1",
                S3_RETRY_WINDOW_SECONDS=WINDOW, **extra)


def _sha256(client, bucket, key):
    return hashlib.sha256(client.get_object(Bucket=bucket, Key=key)["Body"].read()).hexdigest()


def _keys(client, bucket):
    return sorted(item["Key"] for item in client.list_objects_v2(Bucket=bucket).get("Contents", []))


def _replica_findings(env, check):
    report = json.loads(run_cli(env, "health", "--json", check=check).stdout)
    return [finding for finding in report["findings"] if finding["rule"] == "replica"]


def test_a_backup_is_streamed_to_a_replica_on_another_endpoint_and_verified(testbed, source, second_moto):
    replica_bucket = _bucket(second_moto, "quankey-replica")
    env = _env(testbed, source, S3_REPLICA_BUCKET=replica_bucket, S3_REPLICA_ENDPOINT_URL=second_moto.endpoint_url)
    made = json.loads(run_cli(env, "backup", "--json", check=0).stdout)
    assert made["replica"]["status"] == "ok" and made["replica"]["method"] == "streamed", made["replica"]
    assert made["replica"]["bucket"] == replica_bucket and made["replica"]["error"] is None
    replica = second_moto.client()
    primary = testbed.moto.client()
    assert _sha256(replica, replica_bucket, made["object_key"]) == made["checksum_sha256"]
    for key in (made["metadata_key"], made["globals"]["object_key"]):
        assert _sha256(replica, replica_bucket, key) == _sha256(primary, testbed.bucket, key), key
    assert _replica_findings(env, None) == []
    listed = json.loads(run_cli(dict(env, S3_BUCKET=replica_bucket, S3_ENDPOINT_URL=second_moto.endpoint_url),
                                "list", "--json", check=0).stdout)
    assert [item["name"] for item in listed["backups"]] == [made["name"]]


def test_a_replica_on_the_same_endpoint_is_copied_server_side(testbed, source):
    replica_bucket = _bucket(testbed.moto, "quankey-replica-same")
    env = _env(testbed, source, S3_REPLICA_BUCKET=replica_bucket)
    made = json.loads(run_cli(env, "backup", "--json", check=0).stdout)
    assert made["replica"]["status"] == "ok" and made["replica"]["method"] == "server-side", made["replica"]
    client = testbed.moto.client()
    assert _sha256(client, replica_bucket, made["object_key"]) == made["checksum_sha256"]
    assert made["metadata_key"] in _keys(client, replica_bucket)


def test_a_replica_cut_mid_copy_leaves_the_backup_committed_and_health_warns(testbed, source, second_moto):
    replica_bucket = _bucket(second_moto, "quankey-replica-cut")
    with FaultProxy(second_moto.endpoint_url) as proxy:
        env = _env(testbed, source, S3_REPLICA_BUCKET=replica_bucket, S3_REPLICA_ENDPOINT_URL=proxy.endpoint_url)
        good = json.loads(run_cli(env, "backup", "--json", check=0).stdout)
        assert good["replica"]["status"] == "ok"
        outage = proxy.outage(60, method="PUT", path="partNumber=")  # the replica goes away at its first part
        proc = run_cli(env, "backup", "--json", check=0)  # committed on the primary: exit 0, with a warning
        made = json.loads(proc.stdout)
        assert outage.fired.is_set()
        assert made["replica"]["status"] == "failed" and made["replica"]["bucket"] == replica_bucket
        assert made["replica"]["error"], made["replica"]
        assert "its copy to the replica" in proc.stderr and made["name"] in proc.stderr
        primary_keys = _keys(testbed.moto.client(), testbed.bucket)
        assert made["metadata_key"] in primary_keys and made["object_key"] in primary_keys
        proxy.clear()
        proxy.outage(0.1, now=True)  # ends the outage: closed connections, the listener back
        replica_keys = _keys(second_moto.client(), replica_bucket)
        assert made["metadata_key"] not in replica_keys and good["metadata_key"] in replica_keys
        findings = _replica_findings(env, None)
        assert len(findings) == 1 and findings[0]["severity"] == "warning"
        assert "the newest good backup %s is not on the replica" % made["name"] in findings[0]["message"]
        text = run_cli(env, "backup", check=0).stdout  # the next backup reaches the replica again
        assert "replica s3://%s: copied (streamed) and verified" % replica_bucket in text
        assert _replica_findings(env, None) == []
        proxy.outage(120, now=True)  # the replica unreachable: health warns with the reason
        findings = _replica_findings(env, None)
        assert len(findings) == 1 and "cannot be read" in findings[0]["message"], findings


def test_with_the_primary_stopped_restore_and_verify_read_the_replica_and_say_so(testbed, source, second_moto):
    replica_bucket = _bucket(second_moto, "quankey-replica-fallback")
    with MotoServer() as primary:
        env = _env(testbed, source, S3_BUCKET=_bucket(primary, "quankey-primary"), S3_ENDPOINT_URL=primary.endpoint_url,
                   S3_REPLICA_BUCKET=replica_bucket, S3_REPLICA_ENDPOINT_URL=second_moto.endpoint_url)
        made = json.loads(run_cli(env, "backup", "--json", check=0).stdout)
        assert made["replica"]["status"] == "ok"
    # the primary's endpoint is stopped now
    proc = run_cli(env, "verify", "--json", check=0)
    verified = json.loads(proc.stdout)
    assert verified["name"] == made["name"] and verified["checksum_sha256"] == made["checksum_sha256"]
    assert verified["bucket"] == replica_bucket and verified["replica_fallback"]["bucket"] == replica_bucket
    assert verified["trusted"] and verified["signature"].startswith("valid")
    assert "reading the backup from the replica s3://%s" % replica_bucket in proc.stderr
    target = new_name("from_replica")
    try:
        proc = run_cli(env, "restore", "--target-db", target, check=0)
        assert "WARNING: read from the REPLICA s3://%s" % replica_bucket in proc.stdout
        count = testbed.pg.psql("SELECT count(*) FROM information_schema.tables WHERE table_schema NOT IN "
                                "('pg_catalog', 'information_schema') AND table_type = 'BASE TABLE'", db=target)
        assert int(count.strip()) >= 1
    finally:
        testbed.pg.drop_database(target)
    unset = dict(env)
    del unset["S3_REPLICA_BUCKET"]
    proc = run_cli(unset, "verify", check=5)  # no replica: the primary's failure, as before
    assert "reading the backup from the replica" not in proc.stderr and "cannot connect" in proc.stderr
