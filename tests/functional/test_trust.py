# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Issue 6, parts 2-4, end to end through the installed `quankey-backup` command: hybrid-pq recipients
(a host with only the public key backs up but cannot restore), the seed's OpenSSL aes-256-cbc backups (made
by the seed's own pipeline with stock `openssl` and the AWS CLI, and written by us for stock `openssl` to
read), and signed metadata (tampering caught by restore and health). Real PostgreSQL, S3 on moto_server."""

import base64
import datetime
import json
import os
import stat
import subprocess

import pytest

from hostcommand import new_name, run_cli
from sampledb import table_digests
from seedbackup import seed_backup


def new_key():
    return base64.b64encode(os.urandom(32)).decode("ascii")


@pytest.fixture
def env(testbed, source):
    """The seed's variables, each test under its own S3 prefix and host id."""
    values = testbed.backup_env(source)
    values.update(S3_PREFIX=new_name("t"), BACKUP_HOST_ID="db1", BACKUP_ENCRYPTION_KEY=new_key())
    return values


def _json(proc):
    return json.loads(proc.stdout)


def _metadata(s3, bucket, key):
    return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def _put_json(s3, bucket, key, document):
    s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(document).encode())


def _restore_matches(testbed, source, env, *args):
    target = new_name("r")
    result = _json(run_cli(env, "restore", "--target-db", target, "--json", *args, check=0))
    assert table_digests(testbed.pg, target) == table_digests(testbed.pg, source)
    return result


def _no_secret_in(procs, *secrets):
    for proc in procs:
        for secret in secrets:
            assert secret not in proc.stdout and secret not in proc.stderr


# --------------------------------------------------------------------------- hybrid-pq

@pytest.fixture
def keypair(tmp_path, env):
    """`quankey-backup keygen` on the restore side: (identity file, public key, recipient id)."""
    path = str(tmp_path / "restore-side.key")
    proc = run_cli({}, "keygen", "--output", path, "--json", check=0)
    made = _json(proc)
    assert made["identity_file"] == path and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with open(path) as handle:
        secret_lines = [line for line in handle if line.startswith("QKPQ1-SECRET-")]
    assert len(secret_lines) == 1 and secret_lines[0].strip() not in proc.stdout + proc.stderr
    assert made["public_key"].startswith("qkpq1-pub-") and made["recipient_id"].startswith("qkr-")
    again = run_cli({}, "keygen", "--output", path, check=3)  # never overwrites a private key
    assert "already exists" in again.stderr
    return path, made["public_key"], made["recipient_id"]


def _public_only(env, public_key, signing_key):
    """A database host in recipient mode: the public key and the signing key, no master key, no private key."""
    host = dict(env, BACKUP_ENCRYPTION="hybrid-pq", BACKUP_RECIPIENTS=public_key, BACKUP_SIGNING_KEY=signing_key)
    host.pop("BACKUP_ENCRYPTION_KEY")
    return host


def test_a_host_with_only_the_public_key_backs_up_but_cannot_restore(testbed, source, env, s3, keypair):
    identity, public_key, rid = keypair
    signing_key = new_key()
    host = _public_only(env, public_key, signing_key)
    taken = _json(run_cli(host, "backup", "--json", check=0))
    assert (taken["encryption"], taken["key_id"], taken["recipient_ids"]) == ("hybrid-pq", rid, [rid])
    metadata = _metadata(s3, env["S3_BUCKET"], taken["metadata_key"])
    assert metadata["encryption"] == "hybrid-pq" and metadata["quantum_safe"] is True
    assert metadata["envelope"]["type"] == "hybrid-pq-x25519-mlkem768-hkdf-sha256-v2"  # bound to its host, db and name
    assert [slot["recipient_id"] for slot in metadata["envelope"]["recipients"]] == [rid]
    assert metadata["signature"]["key_id"].startswith("qks-")
    header = s3.get_object(Bucket=env["S3_BUCKET"], Key=taken["object_key"], Range="bytes=0-3")["Body"].read()
    assert header == b"QKBK"  # the same data object format as with a master key

    denied = run_cli(host, "restore", "--target-db", new_name("denied"), check=6)
    assert "sealed to recipient(s) %s" % rid in denied.stderr and "BACKUP_IDENTITY_FILE" in denied.stderr
    run_cli(host, "verify", check=6)
    healthy = _json(run_cli(host, "health", "--json", check=0))  # the host knows whom it seals to
    assert healthy["status"] == "ok", healthy["findings"]

    restore_side = dict(host, BACKUP_IDENTITY_FILE=identity)
    result = _restore_matches(testbed, source, restore_side)
    assert result["encryption"] == "hybrid-pq" and result["signature"].startswith("valid (key qks-")
    _no_secret_in([denied], signing_key)


def test_either_of_two_recipients_restores_and_a_stranger_cannot(testbed, source, env, tmp_path):
    made = []
    for name in ("ops", "escrow", "stranger"):
        path = str(tmp_path / name)
        made.append((path, _json(run_cli({}, "keygen", "--output", path, "--json", check=0))))
    (ops, ops_key), (escrow, escrow_key), (stranger, _stranger_key) = made
    signing_key = new_key()
    host = _public_only(env, "%s, %s" % (ops_key["public_key"], escrow_key["public_key"]), signing_key)
    taken = _json(run_cli(host, "backup", "--json", check=0))
    assert taken["recipient_ids"] == [ops_key["recipient_id"], escrow_key["recipient_id"]]
    for path in (ops, escrow):
        _restore_matches(testbed, source, dict(host, BACKUP_IDENTITY_FILE=path))
    wrong = run_cli(dict(host, BACKUP_IDENTITY_FILE=stranger), "verify", check=6)
    assert ops_key["recipient_id"] in wrong.stderr and escrow_key["recipient_id"] in wrong.stderr


def test_rekey_moves_master_key_backups_to_recipients(testbed, source, env, s3, keypair):
    identity, public_key, rid = keypair
    master, signing_key = env["BACKUP_ENCRYPTION_KEY"], new_key()
    taken = [_json(run_cli(dict(env, BACKUP_NAME=new_name("m")), "backup", "--json", check=0)) for _i in range(2)]
    objects = dict((item["object_key"], s3.head_object(Bucket=env["S3_BUCKET"], Key=item["object_key"])["ETag"])
                   for item in taken)
    # where the master key still is: open with it, seal to the recipient, sign with the signing key
    mover = dict(env, BACKUP_ENCRYPTION="hybrid-pq", BACKUP_RECIPIENTS=public_key, BACKUP_SIGNING_KEY=signing_key,
                 BACKUP_DECRYPTION_KEYS=master)
    mover.pop("BACKUP_ENCRYPTION_KEY")
    plan = _json(run_cli(mover, "rekey", "--dry-run", "--json", check=0))
    assert (plan["would_rekey"], plan["active_key_id"], plan["encryption"]) == (2, rid, "hybrid-pq")
    done = _json(run_cli(mover, "rekey", "--json", check=0))
    assert (done["rekeyed"], done["failed"]) == (2, 0)
    for item in taken:
        metadata = _metadata(s3, env["S3_BUCKET"], item["metadata_key"])
        assert metadata["encryption"] == "hybrid-pq" and metadata["recipient_ids"] == [rid]
        assert metadata["signature"]["key_id"] == done["signing_key_id"]
    for key, etag in objects.items():
        assert s3.head_object(Bucket=env["S3_BUCKET"], Key=key)["ETag"] == etag  # data objects untouched
    # the master key no longer opens them; the private key (with the signing key) does
    only_master = run_cli(env, "verify", "--allow-unsigned", check=6)
    assert "sealed to recipient(s) %s" % rid in only_master.stderr
    restore_side = _public_only(env, public_key, signing_key)
    restore_side["BACKUP_IDENTITY_FILE"] = identity
    for item in taken:
        run_cli(restore_side, "verify", "--backup", item["name"], check=0)
    again = _json(run_cli(mover, "rekey", "--json", check=0))
    assert (again["rekeyed"], again["unchanged"]) == (0, 2)


def test_recipient_mode_without_a_signing_key_or_recipients_is_refused_before_anything_runs(env, keypair):
    _identity, public_key, _rid = keypair
    no_signing = dict(env, BACKUP_ENCRYPTION="hybrid-pq", BACKUP_RECIPIENTS=public_key)
    no_signing.pop("BACKUP_ENCRYPTION_KEY")
    proc = run_cli(no_signing, "backup", check=3)
    assert "no key to sign the backup's metadata with: set BACKUP_SIGNING_KEY" in proc.stderr
    proc = run_cli(dict(env, BACKUP_ENCRYPTION="hybrid-pq"), "backup", check=3)
    assert "BACKUP_RECIPIENTS is not set" in proc.stderr
    proc = run_cli(dict(env, BACKUP_ENCRYPTION="hybrid-pq", BACKUP_RECIPIENTS=public_key[:-5]), "backup", check=3)
    assert "BACKUP_RECIPIENTS" in proc.stderr and public_key[:40] not in proc.stderr


# --------------------------------------------------------------------------- the seed's aes-256-cbc

def _seed_backup(testbed, env, tmp_path, name):
    """A backup made as the seed's scripts made it: pg_dump | gzip | openssl enc, the AWS CLI, a flat layout."""
    seed_backup(testbed, env, tmp_path, name)


def test_the_seeds_backups_are_listed_checked_and_restored(testbed, source, env, s3, tmp_path):
    now = datetime.datetime.now(datetime.timezone.utc)
    older, newer = ["quankey_backup_" + (now - datetime.timedelta(hours=hours)).strftime("%Y%m%d_%H%M%S")
                    for hours in (24, 12)]  # the seed's twice-daily runs before the move
    for name in (older, newer):
        _seed_backup(testbed, env, tmp_path, name)
    ours = _json(run_cli(env, "backup", "--json", check=0))

    listed = _json(run_cli(env, "list", "--json", check=0))["backups"]
    assert [(item["name"], item["host"], item.get("layout")) for item in listed] == [
        (ours["name"], "db1", None), (newer, None, "seed"), (older, None, "seed")]
    human = run_cli(env, "list", check=0).stdout
    assert newer in human and "(seed)" in human
    other_db = _json(run_cli(dict(env, DB_NAME="not_" + source), "list", "--json", check=0))["backups"]
    assert other_db == []  # the seed's metadata names the database

    health = _json(run_cli(env, "health", "--json", check=0))
    assert health["status"] == "ok", health["findings"]
    assert [f["rule"] for f in health["findings"]] == ["seed_backups"]  # seen, said, not counted

    # unsigned: used only on request, and then its SQL runs as a plain role (the seed is not a trusted source)
    refused = run_cli(env, "restore", "--backup", newer, "--target-db", new_name("r"), check=8)
    assert "made by the seed's scripts" in refused.stderr and "--allow-seed" in refused.stderr
    result = _restore_matches(testbed, source, env, "--backup", newer, "--allow-seed")
    assert (result["layout"], result["encryption"], result["signature"]) == ("seed", "aes-256-cbc",
                                                                             "unsigned (made by the seed's scripts)")
    assert result["expected_table_count"] is None and result["checksum_ok"] is True
    assert result["sql_ran_as"] == "quankey_restore" and result["trusted"] is False
    verified = _json(run_cli(env, "verify", "--backup", older, "--allow-seed", "--json", check=0))
    assert verified["layout"] == "seed"

    wrong = run_cli(dict(env, BACKUP_ENCRYPTION_KEY=new_key()), "verify", "--backup", newer, "--allow-seed", check=6)
    assert "none of the passphrases given decrypts this aes-256-cbc" in wrong.stderr
    assert "BACKUP_ENCRYPTION_KEY" in wrong.stderr
    # the seed's key kept among the old keys after moving to a new active key still opens them
    rotated = dict(env, BACKUP_ENCRYPTION_KEY=new_key(), BACKUP_DECRYPTION_KEYS=env["BACKUP_ENCRYPTION_KEY"],
                   BACKUP_ALLOW_SEED="true")
    run_cli(rotated, "verify", "--backup", older, check=0)

    # prune leaves the seed's layout alone (not ours; the seed's IAM user may still own it)
    pruned = _json(run_cli(dict(env, BACKUP_RETENTION_DAYS="1", BACKUP_MIN_KEEP="1"), "prune", "--json", check=0))
    assert older not in pruned["deleted"] and newer not in pruned["deleted"]
    keys = [item["Key"] for item in s3.list_objects_v2(Bucket=env["S3_BUCKET"], Prefix=env["S3_PREFIX"] + "/")["Contents"]]
    assert sum(key.endswith(older + ".encrypted") for key in keys) == 1
    _no_secret_in([wrong], env["BACKUP_ENCRYPTION_KEY"])


def test_a_seed_object_swapped_under_its_metadata_is_caught(testbed, source, env, s3, tmp_path):
    name = "quankey_backup_20250810_030000"
    _seed_backup(testbed, env, tmp_path, name)
    key = "%s/backups/postgresql/%s.encrypted" % (env["S3_PREFIX"], name)
    data = bytearray(s3.get_object(Bucket=env["S3_BUCKET"], Key=key)["Body"].read())
    data[len(data) // 2] ^= 0x01  # CBC does not notice a flipped middle byte: the SHA-256 must
    s3.put_object(Bucket=env["S3_BUCKET"], Key=key, Body=bytes(data))
    target = new_name("swapped")
    proc = run_cli(env, "restore", "--backup", name, "--target-db", target, "--allow-seed", "--as-admin", check=6)
    assert "SHA-256" in proc.stderr and "the object was modified" in proc.stderr
    assert testbed.pg.psql("SELECT count(*) FROM pg_database WHERE datname LIKE '%s%%'" % target).strip() == "0"


def test_our_aes_256_cbc_backup_decrypts_with_stock_openssl(testbed, source, env, s3, tmp_path):
    cbc = dict(env, BACKUP_ENCRYPTION="aes-256-cbc", BACKUP_COMPRESSION="gzip")
    taken = _json(run_cli(cbc, "backup", "--json", check=0))
    metadata = _metadata(s3, env["S3_BUCKET"], taken["metadata_key"])
    assert metadata["encryption"] == "aes-256-cbc" and metadata["envelope"]["type"] == "openssl-enc-pbkdf2-sha256"
    obj = tmp_path / "backup.encrypted"
    obj.write_bytes(s3.get_object(Bucket=env["S3_BUCKET"], Key=taken["object_key"])["Body"].read())
    assert obj.read_bytes()[:8] == b"Salted__"

    # docs/FORMAT.md, "Decrypting without Python": check the SHA-256, then openssl | gunzip | pg_restore
    target = new_name("openssl")
    testbed.pg.create_database(target)
    script = ('set -euo pipefail; echo "%s  %s" | sha256sum -c --quiet -; '
              'openssl enc -d -aes-256-cbc -pbkdf2 -pass env:BACKUP_ENCRYPTION_KEY -in %s | gunzip '
              '| "$PGBIN/pg_restore" --exit-on-error -d %s' % (metadata["checksum_sha256"], obj, obj, target))
    run_env = dict(os.environ, BACKUP_ENCRYPTION_KEY=env["BACKUP_ENCRYPTION_KEY"], PGBIN=str(testbed.pg.bindir),
                   PGHOST=env["DB_HOST"], PGPORT=env["DB_PORT"], PGUSER=env["DB_USER"], PGPASSWORD=env["PGPASSWORD"])
    subprocess.run(["bash", "-c", script], env=run_env, check=True)
    assert table_digests(testbed.pg, target) == table_digests(testbed.pg, source)

    result = _restore_matches(testbed, source, env)  # and our own restore reads it, whatever BACKUP_ENCRYPTION says
    assert result["encryption"] == "aes-256-cbc" and result["signature"].startswith("valid")


# --------------------------------------------------------------------------- signed metadata

def test_a_swapped_object_and_checksum_are_caught_by_the_signature(testbed, source, env, s3):
    bucket = env["S3_BUCKET"]
    first = _json(run_cli(dict(env, BACKUP_NAME=new_name("a")), "backup", "--json", check=0))
    second = _json(run_cli(dict(env, BACKUP_NAME=new_name("b")), "backup", "--json", check=0))
    # someone who can write the bucket puts the first backup's object (and its checksum and envelope) under the second
    body = s3.get_object(Bucket=bucket, Key=first["object_key"])["Body"].read()
    s3.put_object(Bucket=bucket, Key=second["object_key"], Body=body)
    forged = _metadata(s3, bucket, second["metadata_key"])
    genuine = _metadata(s3, bucket, first["metadata_key"])
    forged.update(size_bytes=genuine["size_bytes"], checksum_sha256=genuine["checksum_sha256"],
                  envelope=genuine["envelope"])
    _put_json(s3, bucket, second["metadata_key"], forged)

    target = new_name("forged")
    proc = run_cli(env, "restore", "--backup", second["name"], "--target-db", target, check=6)
    assert "metadata signature invalid for backup %s" % second["name"] in proc.stderr
    run_cli(env, "restore", "--backup", second["name"], "--target-db", target, "--allow-unsigned", check=6)
    assert testbed.pg.psql("SELECT count(*) FROM pg_database WHERE datname LIKE '%s%%'" % target).strip() == "0"

    report = _json(run_cli(env, "health", "--json", check=2))
    findings = [f for f in report["findings"] if f["rule"] == "metadata_signature"]
    assert [f["severity"] for f in findings] == ["critical"]
    assert "metadata signature invalid for backup %s" % second["name"] in findings[0]["message"]

    # a whole genuine metadata document copied under the newer name is caught too
    _put_json(s3, bucket, second["metadata_key"], genuine)
    copied = run_cli(env, "verify", "--backup", second["name"], check=6)
    assert "copied from another backup" in copied.stderr


def test_unsigned_metadata_needs_consent_and_is_a_health_warning(testbed, source, env, s3):
    taken = _json(run_cli(env, "backup", "--json", check=0))
    stripped = _metadata(s3, env["S3_BUCKET"], taken["metadata_key"])
    del stripped["signature"]
    _put_json(s3, env["S3_BUCKET"], taken["metadata_key"], stripped)

    refused = run_cli(env, "verify", check=6)
    assert "is not signed" in refused.stderr and "--allow-unsigned" in refused.stderr
    verified = _json(run_cli(env, "verify", "--allow-unsigned", "--json", check=0))
    assert verified["signature"] == "unsigned" and verified["trusted"] is False
    report = _json(run_cli(env, "health", "--json", check=1))
    assert [(f["rule"], f["severity"]) for f in report["findings"]] == [("metadata_signature", "warning")]

    # rekey never signs what it could not verify
    rotated = dict(env, BACKUP_ENCRYPTION_KEY=new_key(), BACKUP_DECRYPTION_KEYS=env["BACKUP_ENCRYPTION_KEY"])
    rekey = _json(run_cli(rotated, "rekey", "--json", check=6))
    assert rekey["failed"] == 1 and "is not signed" in rekey["backups"][0]["error"]
    assert _metadata(s3, env["S3_BUCKET"], taken["metadata_key"]) == stripped
