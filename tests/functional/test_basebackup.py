# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Issue 18 item 3 on the real test bed: `quankey-backup basebackup` streams pg_basebackup's tar (no WAL, its
manifest inside) from the test bed's cluster, over a replication connection, compressed and encrypted into the
bucket; its signed metadata holds the real WAL range and timeline; `verify` checks every file against the manifest;
`list` shows it as kind base; the dumps' commands refuse it by name; a changed object fails verify; a cluster with
an extra tablespace is refused before anything is stored."""

import json
import os
import pwd
import shutil
import tempfile

import pytest

from hostcommand import new_name, run_cli


@pytest.fixture
def env(testbed):
    return dict(testbed.backup_env("postgres"), S3_PREFIX=new_name("base") + "/", BACKUP_HOST_ID="db1",
                BACKUP_COMPRESSION="zstd")


def _objects(s3, env):
    listed = s3.list_objects_v2(Bucket=env["S3_BUCKET"], Prefix=env["S3_PREFIX"]).get("Contents", [])
    return sorted(item["Key"][len(env["S3_PREFIX"]):] for item in listed)


def test_a_real_base_backup_is_stored_encrypted_with_its_wal_range_and_verifies(env, testbed, s3):
    testbed.pg.psql("CREATE TABLE IF NOT EXISTS base_probe (id int); INSERT INTO base_probe VALUES (1)")
    taken = json.loads(run_cli(env, "basebackup", "--fast", "--json", check=0).stdout)
    name = taken["name"]
    assert name.startswith("cluster_base_")  # the cluster's (BACKUP_NAME unset), not DB_NAME's
    assert _objects(s3, env) == ["base/db1/%s.meta" % name, "base/db1/%s.tar.enc" % name]
    identifier = testbed.pg.psql("SELECT system_identifier FROM pg_control_system()").strip()
    timeline = int(testbed.pg.psql("SELECT timeline_id FROM pg_control_checkpoint()").strip())
    assert taken["system_identifier"] == identifier and taken["timeline"] == timeline
    assert taken["start_wal_file"][:8] == "%08X" % timeline and taken["files"] > 500
    body = s3.get_object(Bucket=env["S3_BUCKET"], Key=taken["object_key"])["Body"].read()
    assert body[:4] == b"QKBK" and b"START WAL LOCATION" not in body and b"PG_VERSION" not in body
    assert taken["size_bytes"] == len(body) < taken["tar_bytes"]  # compressed, then encrypted
    meta = json.loads(s3.get_object(Bucket=env["S3_BUCKET"], Key=taken["metadata_key"])["Body"].read())
    assert meta["backup_type"] == "postgresql_base" and meta["signature"]["key_id"]
    assert (meta["start_lsn"], meta["stop_lsn"], meta["timeline"]) == (taken["start_lsn"], taken["stop_lsn"], timeline)
    assert meta["backup_label"].startswith("START WAL LOCATION: %s" % taken["start_lsn"])
    assert meta["manifest"]["sha256"] == taken["manifest_sha256"] and meta["manifest"]["files"] == taken["files"]

    verified = json.loads(run_cli(env, "verify", "--backup", name, "--json", check=0).stdout)
    assert verified["manifest_ok"] and verified["trusted"] and verified["files"] == taken["files"]
    assert json.loads(run_cli(env, "verify", "--base", "--json", check=0).stdout)["name"] == name

    listing = run_cli(env, "list", check=0).stdout
    line = [item for item in listing.splitlines() if item.startswith(name)]
    assert line and " base" in line[0]
    assert [item["name"] for item in json.loads(run_cli(env, "list", "--json", check=0).stdout)["base_backups"]] == [name]

    refused = run_cli(env, "restore", "--backup", name, check=8)
    assert "is a physical base backup" in refused.stderr and "not a dump" in refused.stderr


def test_a_changed_base_backup_fails_verify(env, s3):
    taken = json.loads(run_cli(env, "basebackup", "--fast", "--json", check=0).stdout)
    key = taken["object_key"]
    body = bytearray(s3.get_object(Bucket=env["S3_BUCKET"], Key=key)["Body"].read())
    body[len(body) // 2] ^= 0x01
    s3.put_object(Bucket=env["S3_BUCKET"], Key=key, Body=bytes(body))
    failed = run_cli(env, "verify", "--backup", taken["name"])
    assert failed.returncode == 6 and "the object was modified" in failed.stderr, failed.stderr  # authenticated


def test_a_cluster_with_an_extra_tablespace_is_refused_before_anything_is_stored(env, testbed, s3):
    location = tempfile.mkdtemp(prefix="quankey-tblspc-", dir="/tmp")
    if os.geteuid() == 0:
        entry = pwd.getpwnam("postgres")
        os.chown(location, entry.pw_uid, entry.pw_gid)
    tablespace = new_name("tblspc")
    testbed.pg.psql("CREATE TABLESPACE %s LOCATION '%s'" % (tablespace, location))
    try:
        refused = run_cli(env, "basebackup", check=8)
        assert "tablespace(s) beyond pg_default and pg_global (%s at %s)" % (tablespace, location) in refused.stderr
        assert _objects(s3, env) == []
    finally:
        testbed.pg.psql("DROP TABLESPACE %s" % tablespace)
        shutil.rmtree(location, ignore_errors=True)
