# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The engine end to end on real services: PostgreSQL (initdb, password auth) and S3 (moto_server).

Driven as users drive it: the installed ``quankey-backup`` command with the seed's
variables, boto3 and psql to look at the results.
"""

import base64
import datetime
import json
import os
import stat
import subprocess

import pytest

from ansible_collections.quankey.backup.plugins.module_utils import config
from ansible_collections.quankey.backup.plugins.module_utils.formats import crypto, signing
from ansible_collections.quankey.backup.plugins.module_utils.workflows import backup, health
from ansible_collections.quankey.backup.plugins.module_utils.adapters.postgres import PgClient
import sampledb
from hostcommand import new_name, run_cli
from sampledb import CANARY, table_digests

UTC = datetime.timezone.utc


def databases(pg, like):
    return pg.psql("SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database WHERE datname LIKE '%s'"
                   % like).strip()


@pytest.fixture
def env(testbed, source):
    """The seed's variables for the source database, each test under its own S3 prefix."""
    values = testbed.backup_env(source)
    values["S3_PREFIX"] = new_name("t")
    values["BACKUP_HOST_ID"] = "db1"
    return values


def _settings(env):
    return config.settings_from_env(env)


def _meta_keys(s3, bucket, prefix):
    return [item["Key"] for item in s3.list_objects_v2(Bucket=bucket, Prefix=prefix + "/metadata/").get("Contents", [])]


def _all_keys(s3, bucket, prefix):
    return [item["Key"] for item in s3.list_objects_v2(Bucket=bucket, Prefix=prefix + "/").get("Contents", [])]


def _open_uploads(s3, bucket, prefix):
    return s3.list_multipart_uploads(Bucket=bucket, Prefix=prefix + "/").get("Uploads", [])


def _backup(env):
    return json.loads(run_cli(env, "backup", "--json", check=0).stdout)


def test_backup_restore_round_trip_is_identical_and_stored_encrypted(testbed, source, env, s3):
    result = _backup(env)
    bucket = env["S3_BUCKET"]
    assert result["object_key"] == "%s/backups/postgresql/db1/%s/%s.encrypted" % (env["S3_PREFIX"], source, result["name"])
    assert result["metadata_key"] == "%s/metadata/db1/%s/%s.meta" % (env["S3_PREFIX"], source, result["name"])
    assert result["table_count"] == sampledb.TABLE_COUNT  # the partitioned parent counts too

    stored = s3.get_object(Bucket=bucket, Key=result["object_key"])["Body"].read()
    assert len(stored) == result["size_bytes"]
    assert b"PGDMP" not in stored
    assert CANARY.encode() not in stored and b"customers" not in stored
    assert s3.head_object(Bucket=bucket, Key=result["object_key"])["StorageClass"] == "STANDARD_IA"

    metadata = json.loads(s3.get_object(Bucket=bucket, Key=result["metadata_key"])["Body"].read())
    for field in ("backup_type", "database", "timestamp", "size_bytes", "checksum_sha256", "encryption", "format",
                  "retention_days", "quantum_safe", "compression", "key_id", "server_version", "pg_dump_version",
                  "table_count", "host", "duration_seconds"):
        assert field in metadata, field
    assert metadata["database"] == source and metadata["encryption"] == "aes-256-gcm"
    assert metadata["compression"] == "zstd" and metadata["host"] == "db1"
    assert metadata["size_bytes"] == len(stored)
    import hashlib
    assert metadata["checksum_sha256"] == hashlib.sha256(stored).hexdigest()

    listed = json.loads(run_cli(env, "list", "--json", check=0).stdout)
    assert [item["name"] for item in listed["backups"]] == [result["name"]]

    verified = json.loads(run_cli(env, "verify", "--json", check=0).stdout)
    assert verified["checksum_ok"] and verified["table_count"] == result["table_count"]

    target = new_name("restored")
    restored = json.loads(run_cli(env, "restore", "--target-db", target, "--json", check=0).stdout)
    assert restored["target_db"] == target and restored["table_count"] == result["table_count"]
    assert table_digests(testbed.pg, target) == table_digests(testbed.pg, source)
    assert testbed.pg.psql("SELECT count(*) FROM rich", db=target).strip() == \
        testbed.pg.psql("SELECT count(*) FROM rich", db=source).strip()
    assert databases(testbed.pg, target + "__%") == ""  # no staging database left


@pytest.mark.parametrize("encryption", ["aes-256-cbc", "aes-256-gcm"])
@pytest.mark.parametrize("compression", ["zstd", "gzip", "none"])
def test_a_tiny_database_round_trips_in_every_mode(testbed, env, encryption, compression):
    """A dump smaller than the first look at an aes-256-cbc object (its last block is held back until the end)."""
    tiny = new_name("tiny")
    testbed.pg.create_database(tiny)
    testbed.pg.psql("CREATE TABLE t (i int); INSERT INTO t VALUES (1)", db=tiny)
    env.update(DB_NAME=tiny, BACKUP_ENCRYPTION=encryption, BACKUP_COMPRESSION=compression)
    result = _backup(env)
    assert result["size_bytes"] < 4096
    verified = json.loads(run_cli(env, "verify", "--json", check=0).stdout)
    assert verified["table_count"] == 1 and verified["payload"] == "custom"
    target = new_name("tiny_restored")
    run_cli(env, "restore", "--target-db", target, check=0)
    assert testbed.pg.psql("SELECT i FROM t", db=target).strip() == "1"


@pytest.mark.parametrize("compression", ["gzip", "none"])
def test_other_compressions_round_trip(testbed, source, env, compression):
    env["BACKUP_COMPRESSION"] = compression
    result = _backup(env)
    metadata_compression = json.loads(run_cli(env, "list", "--json", "--details", check=0).stdout)["backups"][0]
    assert metadata_compression["compression"] == compression
    target = new_name("restored_" + compression)
    run_cli(env, "restore", "--backup", result["name"], "--target-db", target, check=0)
    assert table_digests(testbed.pg, target) == table_digests(testbed.pg, source)


def test_restore_selects_by_name_seed_variable_and_time(testbed, source, env):
    settings = _settings(env)
    old = backup.run_backup(settings, now=datetime.datetime(2025, 8, 9, 3, 0, 0, tzinfo=UTC))
    new = backup.run_backup(settings, now=datetime.datetime(2025, 8, 10, 3, 0, 0, tzinfo=UTC))
    assert old["name"].endswith("_backup_20250809_030000")

    target = new_name("by_time")
    out = json.loads(run_cli(env, "restore", "--before", "2025-08-10T00:00:00Z", "--target-db", target, "--json",
                             check=0).stdout)
    assert out["name"] == old["name"]

    seed_env = dict(env, BACKUP_FILE=new["name"] + ".encrypted")
    target = new_name("by_seed_name")
    out = json.loads(run_cli(seed_env, "restore", "--target-db", target, "--json", check=0).stdout)
    assert out["name"] == new["name"]

    proc = run_cli(env, "restore", "--backup", "nope_backup_20200101_000000", check=7)
    assert "not found" in proc.stderr and "quankey-backup list" in proc.stderr


def test_existing_target_is_refused_and_force_keeps_the_old_one(testbed, source, env):
    _backup(env)
    target = new_name("live")
    testbed.pg.create_database(target)
    testbed.pg.psql("CREATE TABLE precious (x int); INSERT INTO precious VALUES (42)", db=target)

    proc = run_cli(env, "restore", "--target-db", target, check=8)
    assert "already exists" in proc.stderr and "--force" in proc.stderr
    assert testbed.pg.psql("SELECT x FROM precious", db=target).strip() == "42"

    out = json.loads(run_cli(env, "restore", "--target-db", target, "--force", "--json", check=0).stdout)
    assert table_digests(testbed.pg, target) == table_digests(testbed.pg, source)
    assert out["replaced_db"].startswith(target + "__replaced_")
    assert testbed.pg.psql("SELECT x FROM precious", db=out["replaced_db"]).strip() == "42"


def _rewrite(s3, bucket, key, data):
    s3.put_object(Bucket=bucket, Key=key, Body=data, StorageClass="STANDARD_IA")


def _fix_metadata(s3, bucket, key, data, master_key=None):
    """Make the metadata agree with tampered data: an attacker who can write the bucket, or with ``master_key``
    (base64), one who also holds the key that signs metadata (to test the layers beneath the signature)."""
    import hashlib
    meta_key = key.replace("/backups/postgresql/", "/metadata/").replace(".encrypted", ".meta")
    metadata = json.loads(s3.get_object(Bucket=bucket, Key=meta_key)["Body"].read())
    metadata["size_bytes"] = len(data)
    metadata["checksum_sha256"] = hashlib.sha256(data).hexdigest()
    if master_key:
        master = base64.b64decode(master_key)
        metadata = signing.sign_metadata(metadata, crypto.key_id(master), signing.derive_signing_key(master))
    s3.put_object(Bucket=bucket, Key=meta_key, Body=json.dumps(metadata).encode())


@pytest.mark.parametrize("damage,fix_metadata,reason", [
    ("flip", False, "SHA-256|authentication failed"),
    ("flip", "forged", "metadata signature invalid for backup"),
    ("flip", "re-signed", "authentication failed at segment"),
    ("truncate", False, "metadata says"),
    ("truncate", "forged", "metadata signature invalid for backup"),
    ("truncate", "re-signed", "truncated"),
])
def test_damaged_object_fails_with_the_reason_and_leaves_no_database(testbed, source, env, s3, damage, fix_metadata, reason):
    result = _backup(env)
    bucket, key = env["S3_BUCKET"], result["object_key"]
    data = bytearray(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    if damage == "flip":
        data[len(data) // 2] ^= 0x01
    else:
        cut = crypto.HEADER_SIZE + crypto.DEFAULT_SEGMENT_SIZE + crypto.TAG_SIZE  # exactly after the first whole segment
        assert len(data) > cut, (
            "precondition: the sample backup is %d bytes, not longer than its header and first whole segment (%d): "
            "the cut would remove nothing; tests/sampledb.py must hold more than its %d random bytes"
            % (len(data), cut, sampledb.incompressible_bytes()))
        data = data[:cut]
    _rewrite(s3, bucket, key, bytes(data))
    if fix_metadata:
        _fix_metadata(s3, bucket, key, bytes(data), env["BACKUP_ENCRYPTION_KEY"] if fix_metadata == "re-signed" else None)

    target = new_name("damaged")
    proc = run_cli(env, "restore", "--target-db", target, check=6)
    import re
    assert re.search(reason, proc.stderr), proc.stderr
    assert databases(testbed.pg, target + "%") == ""
    run_cli(env, "verify", check=6)


def test_wrong_key_is_named_and_creates_nothing(testbed, source, env):
    result = _backup(env)
    wrong = dict(env, BACKUP_ENCRYPTION_KEY=base64.b64encode(os.urandom(32)).decode())
    target = new_name("wrongkey")
    proc = run_cli(wrong, "restore", "--target-db", target, check=6)
    assert result["key_id"] in proc.stderr and "BACKUP_ENCRYPTION_KEY" in proc.stderr
    assert databases(testbed.pg, target + "%") == ""


def _fake_bin(tmp_path, pg_dump_script):
    """A PG_BIN_DIR whose pg_dump is a script; the other programs are the real ones."""
    real = PgClient(_settings({"DB_NAME": "x"})).bin_dir
    fake = tmp_path / "bin"
    fake.mkdir()
    for program in ("psql", "pg_restore"):
        (fake / program).symlink_to(os.path.join(real, program))
    script = fake / "pg_dump"
    script.write_text("#!/bin/sh\n" + pg_dump_script.replace("REAL", real))
    script.chmod(0o755)
    return str(fake)


def test_pg_dump_killed_mid_stream_leaves_no_metadata_and_no_upload(testbed, source, env, s3, tmp_path):
    # pg_dump is killed after 12 MB: more than one 8 MiB part has gone up by then
    env["PG_BIN_DIR"] = _fake_bin(tmp_path, 'case "$1" in --version) exec REAL/pg_dump --version;; esac\n'
                                            'REAL/pg_dump "$@" | head -c 12000000\nkill -9 $$\n')
    env["BACKUP_COMPRESSION"] = "none"
    testbed.pg.psql("INSERT INTO blobs SELECT g, decode(string_agg(md5(random()::text || g || i), ''), 'hex') "
                    "FROM generate_series(100001, 100400) g, generate_series(1, 1024) i GROUP BY g", db=source)
    try:
        proc = run_cli(env, "backup", check=4)
    finally:
        testbed.pg.psql("DELETE FROM blobs WHERE id > 100000", db=source)
    assert "pg_dump was killed by signal 9" in proc.stderr
    assert _all_keys(s3, env["S3_BUCKET"], env["S3_PREFIX"]) == []
    assert _open_uploads(s3, env["S3_BUCKET"], env["S3_PREFIX"]) == []


def test_wrong_password_fails_before_anything_is_written(testbed, env, s3):
    proc = run_cli(dict(env, PGPASSWORD="not-the-password"), "backup", check=4)
    assert "rejected the password" in proc.stderr and "PGPASSWORD" in proc.stderr
    assert _all_keys(s3, env["S3_BUCKET"], env["S3_PREFIX"]) == []
    assert _open_uploads(s3, env["S3_BUCKET"], env["S3_PREFIX"]) == []


def test_old_pg_dump_is_refused_plainly(env, tmp_path):
    env["PG_BIN_DIR"] = _fake_bin(tmp_path, 'echo "pg_dump (PostgreSQL) 12.22"\n')
    proc = run_cli(env, "backup", check=3)
    assert "pg_dump 12.22 cannot dump a PostgreSQL 15 server: install postgresql-client-15" in proc.stderr


@pytest.mark.parametrize("change,code,words", [
    ({"BACKUP_ENCRYPTION_KEY": ""}, 3, "BACKUP_ENCRYPTION_KEY is not set: generate one with `openssl rand -base64 32`"),
    ({"BACKUP_ENCRYPTION_KEY": "not base64 at all!"}, 3, "base64"),
    ({"BACKUP_ENCRYPTION_KEY": base64.b64encode(b"short").decode()}, 3, "32"),
    ({"DB_PORT": "1"}, 4, "connection refused"),
    ({"DB_NAME": "no_such_db"}, 4, "database 'no_such_db' does not exist"),
    ({"S3_BUCKET": "no-such-bucket-here"}, 5, "bucket 'no-such-bucket-here' does not exist"),
    ({"S3_ENDPOINT_URL": "http://127.0.0.1:9", "S3_RETRY_WINDOW_SECONDS": "2"}, 5,
     "cannot reach the S3 endpoint http://127.0.0.1:9"),
    ({"BACKUP_COMPRESSION": "lz4"}, 3, "BACKUP_COMPRESSION 'lz4' is not supported"),
])
def test_bad_input_gets_one_clear_line(testbed, env, s3, change, code, words):
    proc = run_cli(dict(env, **change), "backup", check=code)
    assert words in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "Traceback" not in proc.stderr
    assert _all_keys(s3, env["S3_BUCKET"], env["S3_PREFIX"]) == []


def test_access_denied_names_the_prefix_and_the_policy(testbed, source, tmp_path):
    from testbed import MotoServer
    with MotoServer(initial_no_auth_action_count=4) as iam_s3:
        admin = iam_s3.client("s3")
        admin.create_bucket(Bucket="locked")
        iam = iam_s3.client("iam")
        iam.create_user(UserName="reader")
        iam.put_user_policy(UserName="reader", PolicyName="list-only", PolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": ["arn:aws:s3:::locked"]}]}))
        keys = iam.create_access_key(UserName="reader")["AccessKey"]
        env = testbed.backup_env(source)
        env.update(S3_BUCKET="locked", S3_ENDPOINT_URL=iam_s3.endpoint_url, AWS_ACCESS_KEY_ID=keys["AccessKeyId"],
                   AWS_SECRET_ACCESS_KEY=keys["SecretAccessKey"], BACKUP_HOST_ID="db1")
        proc = run_cli(env, "backup", check=5)
    assert "S3 access denied for s3://locked/" in proc.stderr and "IAM policy" in proc.stderr
    assert keys["SecretAccessKey"] not in proc.stderr


def test_secrets_never_reach_logs_output_or_argv(testbed, source, env):
    secrets_ = [env["PGPASSWORD"], env["AWS_SECRET_ACCESS_KEY"], env["BACKUP_ENCRYPTION_KEY"]]
    runs = [run_cli(env, "backup", check=0), run_cli(env, "list", check=0), run_cli(env, "health", "--json", check=0),
            run_cli(env, "restore", "--target-db", new_name("secrets"), check=0),
            run_cli(dict(env, PGPASSWORD=env["PGPASSWORD"] + "x"), "backup", check=4),
            run_cli(dict(env, BACKUP_ENCRYPTION_KEY=env["BACKUP_ENCRYPTION_KEY"][:-4]), "backup", check=3)]
    for proc in runs:
        for secret in secrets_:
            assert secret not in proc.stdout and secret not in proc.stderr
    pg = PgClient(_settings(env))
    for argv in (pg.dump_argv(source), pg.restore_argv(source), pg.connection_args(source)):
        assert env["PGPASSWORD"] not in " ".join(argv)


def test_env_file_is_read_and_its_mode_checked(testbed, source, env, tmp_path):
    from testbed import write_env_file
    path = tmp_path / "backup.env"
    write_env_file(str(path), env)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    proc = run_cli({}, "--env-file", str(path), "list", check=0)
    assert "chmod" not in proc.stderr
    path.chmod(0o644)
    proc = run_cli({}, "--env-file", str(path), "list", check=0)
    assert "chmod 0600" in proc.stderr


def test_health_ok_then_critical_when_the_newest_backup_is_old(testbed, source, env):
    taken = _backup(env)
    min_size = health.HealthPolicy().min_size_bytes
    assert taken["size_bytes"] > min_size, (
        "precondition: the sample backup is %d bytes, not over health's default min_size (%d), so 'ok' cannot be "
        "expected; tests/sampledb.py must hold more than its %d random bytes"
        % (taken["size_bytes"], min_size, sampledb.incompressible_bytes()))
    report = json.loads(run_cli(dict(env, OUTPUT_JSON="true"), "health", check=0).stdout)
    assert report["status"] == "ok" and report["latest"]["age_hours"] < 1

    stale = dict(env, S3_PREFIX=new_name("stale"))
    backup.run_backup(_settings(stale), now=catalog_now() - datetime.timedelta(days=3))
    proc = run_cli(stale, "health", "--json", check=2)
    report = json.loads(proc.stdout)
    assert report["status"] == "critical"
    assert [f["rule"] for f in report["findings"] if f["severity"] == "critical"] == ["age"]
    human = run_cli(stale, "health", check=2).stdout
    assert human.startswith("CRITICAL") and "backups have stopped" in human


def test_health_is_critical_when_s3_is_unreachable(env):
    proc = run_cli(dict(env, S3_ENDPOINT_URL="http://127.0.0.1:9", S3_RETRY_WINDOW_SECONDS="2"), "health", "--json",
                   check=2)
    report = json.loads(proc.stdout)
    assert [f["rule"] for f in report["findings"]] == ["s3_access"]


def test_health_catches_a_plaintext_object(testbed, source, env, s3):
    result = _backup(env)
    dump = subprocess.run(PgClient(_settings(env)).dump_argv(source), env=dict(os.environ, PGPASSWORD=env["PGPASSWORD"]),
                          stdout=subprocess.PIPE, check=True).stdout
    _rewrite(s3, env["S3_BUCKET"], result["object_key"], dump)
    _fix_metadata(s3, env["S3_BUCKET"], result["object_key"], dump, env["BACKUP_ENCRYPTION_KEY"])
    report = json.loads(run_cli(env, "health", "--json", check=2).stdout)
    assert any(f["rule"] == "encryption" and "plaintext" in f["message"] for f in report["findings"])


def catalog_now():
    return datetime.datetime.now(UTC)


def test_prune_keeps_the_newest_good_backups_of_a_stopped_host(testbed, source, env, s3):
    settings = _settings(env)
    base = catalog_now() - datetime.timedelta(days=60)
    names = [backup.run_backup(settings, now=base + datetime.timedelta(days=day))["name"] for day in range(5)]
    env.update(BACKUP_RETENTION_DAYS="7", BACKUP_MIN_KEEP="3")

    dry = json.loads(run_cli(env, "prune", "--dry-run", "--json", check=0).stdout)
    assert sorted(dry["deleted"]) == sorted(names[:2])
    assert len(_meta_keys(s3, env["S3_BUCKET"], env["S3_PREFIX"])) == 5

    done = json.loads(run_cli(env, "prune", "--json", check=0).stdout)
    assert sorted(done["deleted"]) == sorted(names[:2]) and sorted(done["kept"]) == sorted(names[2:])
    keys = _all_keys(s3, env["S3_BUCKET"], env["S3_PREFIX"])
    assert len(keys) == 9 and not any(name in key for key in keys for name in names[:2])  # data, globals, metadata

    fresh = _backup(env)["name"]
    done = json.loads(run_cli(env, "prune", "--json", check=0).stdout)
    assert sorted(done["kept"]) == sorted([fresh] + names[3:])
    assert sorted(done["deleted"]) == [names[2]]
