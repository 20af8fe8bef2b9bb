# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Issue 10 as an attacker would try it: write access to the bucket (sometimes a public key too), no key.

Real PostgreSQL and S3 (tests/testbed.py), the installed ``quankey-backup`` command, and bytes made
with stock tools (boto3, the AWS CLI, openssl, pg_dump) where an attacker would make them. Each test
backs a row of docs/KEYS.md's threat table; a positive control shows each trick is real where it
could be shown safely.
"""

import base64
import datetime
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from ansible_collections.quankey.backup.plugins.module_utils import config
from ansible_collections.quankey.backup.plugins.module_utils.adapters import s3 as storage
from ansible_collections.quankey.backup.plugins.module_utils.catalog import layout
from ansible_collections.quankey.backup.plugins.module_utils.workflows import backup, rekey, restore
from ansible_collections.quankey.backup.plugins.module_utils.errors import ConflictError, StorageError
from hostcommand import new_name, run_cli
from sampledb import table_digests
from seedbackup import seed_backup, seed_keys

UTC = datetime.timezone.utc
RESTORE_ROLE = "quankey_restore"


def new_key():
    return base64.b64encode(os.urandom(32)).decode("ascii")


@pytest.fixture
def env(testbed, source):
    """A database host's settings: its own S3 prefix, host id db1, a fresh master key."""
    values = testbed.backup_env(source)
    values.update(S3_PREFIX=new_name("atk"), BACKUP_HOST_ID="db1", BACKUP_ENCRYPTION_KEY=new_key())
    return values


def _json(proc):
    return json.loads(proc.stdout)


def _get(s3, bucket, key):
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


def _put(s3, bucket, key, body):
    s3.put_object(Bucket=bucket, Key=key, Body=body if isinstance(body, bytes) else json.dumps(body).encode())


def _databases_like(pg, prefix):
    return int(pg.psql("SELECT count(*) FROM pg_database WHERE datname LIKE '%s%%'" % prefix).strip())


def _restore_logins_left(pg):
    """Temporary login roles of the restore role that outlived their restore."""
    return pg.psql("SELECT string_agg(rolname, ',') FROM pg_roles WHERE rolname LIKE '%s\\_%%'" % RESTORE_ROLE).strip()


def _place(env, host, db, name):
    """(object key, metadata key) of a backup's place in the host layout."""
    prefix = config.normalize_prefix(env["S3_PREFIX"])
    return layout.object_key(prefix, host, db, name), layout.metadata_key(prefix, host, db, name)


# --------------------------------------------------------------------------- bucket writer: fields do not grant trust

def test_a_layout_field_added_to_our_metadata_skips_nothing(testbed, env, s3):
    bucket = env["S3_BUCKET"]
    taken = _json(run_cli(env, "backup", "--json", check=0))
    forged = json.loads(_get(s3, bucket, taken["metadata_key"]))
    forged["layout"] = "seed"  # once enough to skip the signature check
    _put(s3, bucket, taken["metadata_key"], forged)
    stored = _get(s3, bucket, taken["metadata_key"])

    target = new_name("layout")
    for args in (("restore", "--target-db", target), ("verify",),
                 ("restore", "--target-db", target, "--allow-unsigned", "--allow-seed", "--as-admin")):
        proc = run_cli(env, *args, check=6)
        assert "field(s) 'layout', which metadata version 5 does not define" in proc.stderr, proc.stderr
    assert _databases_like(testbed.pg, target) == 0

    rotated = dict(env, BACKUP_ENCRYPTION_KEY=new_key(), BACKUP_DECRYPTION_KEYS=env["BACKUP_ENCRYPTION_KEY"])
    rekey = _json(run_cli(rotated, "rekey", "--json", check=6))
    assert rekey["failed"] == 1 and rekey["rekeyed"] == 0 and "does not define" in rekey["backups"][0]["error"]
    assert _get(s3, bucket, taken["metadata_key"]) == stored  # never re-signed

    report = _json(run_cli(rotated, "health", "--json", check=2))
    assert ("metadata", "critical") in [(f["rule"], f["severity"]) for f in report["findings"]]
    listed = _json(run_cli(env, "list", "--details", "--json", check=0))["backups"]
    assert [(item["name"], item["signature"], item["trusted"]) for item in listed] == [(taken["name"], "invalid", False)]


def test_another_hosts_backup_put_in_this_hosts_place_is_refused_signed_or_not(testbed, source, env, s3):
    bucket = env["S3_BUCKET"]
    theirs = _json(run_cli(dict(env, BACKUP_HOST_ID="db2"), "backup", "--json", check=0))
    obj, meta = _place(env, "db1", source, theirs["name"])
    _put(s3, bucket, obj, _get(s3, bucket, theirs["object_key"]))
    document = json.loads(_get(s3, bucket, theirs["metadata_key"]))
    _put(s3, bucket, meta, document)

    target = new_name("swap")
    for extra in ((), ("--allow-unsigned",)):
        proc = run_cli(env, "restore", "--target-db", target, *extra, check=6)
        assert "is not this backup's: its host is 'db2' where 'db1' is stored" in proc.stderr
    # the attacker rewrites the copy to name this place (the signature then fails, so it is removed too)
    claimed = dict(document, host="db1", object_key=obj)
    del claimed["signature"]
    _put(s3, bucket, meta, claimed)
    proc = run_cli(env, "restore", "--target-db", target, "--allow-unsigned", "--as-admin", check=6)
    assert "copied from another backup" in proc.stderr  # the data key's wrap is bound to db2's place
    assert _databases_like(testbed.pg, target) == 0
    report = _json(run_cli(env, "health", "--json", check=2))
    assert report["findings"][0]["severity"] == "critical"

    # the genuine backup restores onto a replacement machine, its SQL as the plain restore role
    target = new_name("replacement")
    restored = _json(run_cli(env, "restore", "--host", "db2", "--target-db", target, "--json", check=0))
    assert (restored["source_host"], restored["sql_ran_as"], restored["trusted"]) == ("db2", RESTORE_ROLE, True)
    assert restored["owner"] == RESTORE_ROLE  # another host's archive: nothing of it is handed to the superuser
    assert table_digests(testbed.pg, target) == table_digests(testbed.pg, source)
    assert not _restore_logins_left(testbed.pg)


# --------------------------------------------------------------------------- bucket writer: the seed's flat layout

def test_a_planted_seed_meta_is_never_the_latest_without_consent(testbed, source, env, s3, tmp_path):
    ours = _json(run_cli(env, "backup", "--json", check=0))
    planted = "quankey_backup_" + (datetime.datetime.now(UTC) + datetime.timedelta(hours=1)).strftime("%Y%m%d_%H%M%S")
    seed_backup(testbed, dict(env, BACKUP_ENCRYPTION_KEY="the attacker's own passphrase"), tmp_path, planted)

    assert _json(run_cli(env, "verify", "--json", check=0))["name"] == ours["name"]
    restored = _json(run_cli(env, "restore", "--target-db", new_name("r"), "--json", check=0))
    assert restored["name"] == ours["name"] and restored["layout"] == "host"
    listed = _json(run_cli(env, "list", "--json", check=0))["backups"]
    assert [(item["name"], item.get("layout")) for item in listed] == [(planted, "seed"), (ours["name"], None)]
    report = _json(run_cli(env, "health", "--json", check=0))
    assert [(f["rule"], f["severity"]) for f in report["findings"]] == [("seed_backups", "info")]
    assert report["latest"]["name"] == ours["name"]
    named = run_cli(env, "verify", "--backup", planted, check=8)
    assert "made by the seed's scripts" in named.stderr and "--allow-seed" in named.stderr


def test_a_seed_meta_without_a_timestamp_is_refused_before_any_database_exists(testbed, source, env, s3, tmp_path):
    name = "quankey_backup_20250809_030000"
    seed_backup(testbed, env, tmp_path, name)
    _obj, meta = seed_keys(env, name)
    document = json.loads(_get(s3, env["S3_BUCKET"], meta))
    del document["timestamp"]
    _put(s3, env["S3_BUCKET"], meta, document)
    target = new_name("seedmeta")
    proc = run_cli(env, "restore", "--backup", name, "--allow-seed", "--as-admin", "--target-db", target, check=6)
    assert "lacks timestamp" in proc.stderr and "Traceback" not in proc.stderr
    assert _databases_like(testbed.pg, target) == 0


# --------------------------------------------------------------------------- public key + bucket writer: code in the SQL

EVIL_SQL = """
CREATE FUNCTION public.run(n int) RETURNS int LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    -- the program reads what COPY writes: one that exits first (touch alone) can make the server's pclose fail with
    -- a broken pipe, now and then, and the restore with it
    EXECUTE format('COPY (SELECT 1) TO PROGRAM %L', 'cat >/dev/null; touch {marks}/ran-in-' || current_database());
    RETURN n;
END $$;
CREATE FUNCTION public.evil(n int) RETURNS int LANGUAGE plpgsql IMMUTABLE AS $$ BEGIN RETURN public.run(n); END $$;
CREATE TABLE public.t (a int);
INSERT INTO public.t VALUES (1);
CREATE INDEX t_evil ON public.t (public.evil(a));
"""


@pytest.fixture
def marks():
    """A directory the postgres OS user may write, for the files the archive's code would leave."""
    path = tempfile.mkdtemp(prefix="quankey-marks-")
    os.chmod(path, 0o1777)
    yield Path(path)
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("signer", ["its own key", "the fleet's signing key"])
def test_a_forged_recipient_backup_with_code_in_its_sql_runs_nothing(testbed, env, s3, tmp_path, marks, signer):
    """With the public key and bucket write (and, the second time, the signing key of a broken-into host, which
    can sign for any host's place), a whole backup can be forged. Its SQL runs as the restore role: nothing ran."""
    keyfile = str(tmp_path / "restore-side.key")
    public_key = _json(run_cli({}, "keygen", "--output", keyfile, "--json", check=0))["public_key"]
    fleet_signing_key = new_key()
    victim_db = new_name("vault")
    restore_side = dict(env, DB_NAME=victim_db, BACKUP_HOST_ID="db2", BACKUP_ENCRYPTION="hybrid-pq",
                        BACKUP_RECIPIENTS=public_key, BACKUP_SIGNING_KEY=fleet_signing_key, BACKUP_IDENTITY_FILE=keyfile)
    restore_side.pop("BACKUP_ENCRYPTION_KEY")

    # the attacker: a database of that name on a server of their own, sealed to the public key, put in db2's place
    testbed.pg.create_database(victim_db)
    testbed.pg.psql(EVIL_SQL.format(marks=marks), db=victim_db)
    attacker = dict(restore_side, BACKUP_SIGNING_KEY=fleet_signing_key if signer != "its own key" else new_key())
    del attacker["BACKUP_IDENTITY_FILE"]
    forged = _json(run_cli(attacker, "backup", "--json", check=0))
    assert forged["encryption"] == "hybrid-pq" and forged["host"] == "db2"
    testbed.pg.drop_database(victim_db)
    for made in marks.iterdir():
        made.unlink()  # CREATE INDEX ran it once on the attacker's own server

    if signer == "its own key":
        proc = run_cli(restore_side, "restore", "--target-db", new_name("r"), check=6)
        assert "signed with key" in proc.stderr and "not among the keys given" in proc.stderr
    target = new_name("guarded")
    proc = run_cli(restore_side, "restore", "--target-db", target, "--allow-unsigned", "--json", check=4)
    assert "pg_execute_server_program role to COPY to or from an external program" in proc.stderr, proc.stderr
    assert "needs a privilege that the role it runs as does not have" in proc.stderr
    assert "staging database was dropped" in proc.stderr
    assert list(marks.iterdir()) == []  # nothing ran
    assert _databases_like(testbed.pg, target) == 0 and not _restore_logins_left(testbed.pg)

    # positive control: the same archive run as the superuser (the explicit --as-admin) does run its program
    control = new_name("control")
    run_cli(restore_side, "restore", "--target-db", control, "--allow-unsigned", "--as-admin", check=0)
    made = [path.name for path in marks.iterdir()]
    assert len(made) == 1 and made[0].startswith("ran-in-%s__restoring_" % control), made
    testbed.pg.drop_database(control)


# --------------------------------------------------------------------------- aes-256-cbc: checksum before plaintext

class StdinSpy:
    """A PG_BIN_DIR whose pg_restore keeps a copy of every byte it is given, then runs the real one."""

    def __init__(self, root, real_bindir):
        self.bindir = root / "bin"
        self.seen = root / "seen"
        self.bindir.mkdir()
        self.seen.mkdir()
        for program in ("psql", "pg_dump"):
            (self.bindir / program).symlink_to(real_bindir / program)
        script = self.bindir / "pg_restore"
        script.write_text('#!/bin/bash\ncopy=$(mktemp %s/XXXXXX)\nprintf "%%s " "$@" > "$copy.argv"\n'
                          'exec tee "$copy" | %s "$@"\n' % (self.seen, real_bindir / "pg_restore"))
        script.chmod(0o755)

    def received(self):
        """{argv: bytes received} of every pg_restore that read the archive."""
        found = {}
        for path in self.seen.glob("*.argv"):
            argv = path.read_text()
            if "--version" not in argv:
                found[argv] = path.with_suffix("").stat().st_size if path.with_suffix("").exists() else 0
        return found

    def clear(self):
        for path in self.seen.iterdir():
            path.unlink()


def test_a_modified_cbc_object_gives_pg_restore_not_one_byte(testbed, source, env, s3, tmp_path):
    spy = StdinSpy(tmp_path, testbed.pg.bindir)
    cbc = dict(env, BACKUP_ENCRYPTION="aes-256-cbc", BACKUP_COMPRESSION="gzip", PG_BIN_DIR=str(spy.bindir))
    intact = _json(run_cli(dict(cbc, BACKUP_NAME="intact"), "backup", "--json", check=0))
    taken = _json(run_cli(cbc, "backup", "--json", check=0))
    body = bytearray(_get(s3, env["S3_BUCKET"], taken["object_key"]))
    body[len(body) // 2] ^= 0x01  # CBC decrypts past this silently: only the whole object's SHA-256 shows it
    _put(s3, env["S3_BUCKET"], taken["object_key"], bytes(body))

    for args in (("restore", "--target-db", new_name("cbc")), ("verify",)):
        spy.clear()
        proc = run_cli(cbc, *args, check=6)
        assert "SHA-256" in proc.stderr and "the object was modified" in proc.stderr
        received = spy.received()
        assert set(received.values()) <= {0}, received  # not one byte (pg_restore is not even started before the check)

    spy.clear()  # positive control: an intact object does reach pg_restore, after its check
    run_cli(dict(cbc, BACKUP_NAME="intact"), "restore", "--backup", intact["name"], "--target-db", new_name("ok"),
            check=0)
    assert max(spy.received().values()) > 0


# --------------------------------------------------------------------------- racing writers

class _RacingStore(storage.S3Store):
    """The real store, with a hook that lets another writer act at the worst moment."""

    after_read = staticmethod(lambda key: None)
    exists_lies = False
    lose_put_answers = False

    def get_bytes_and_etag(self, key):
        found = super().get_bytes_and_etag(key)
        self.after_read(key)
        return found

    def exists(self, key):
        return False if self.exists_lies else super().exists(key)

    def put_bytes(self, key, data, **kwargs):
        stored = super().put_bytes(key, data, **kwargs)
        if self.lose_put_answers:
            raise StorageError("S3 PutObject of %s failed: connection reset (the answer was lost)" % key)
        return stored


def _racing_store(env):
    return _RacingStore.from_settings(config.settings_from_env(env))


def test_rekey_never_overwrites_metadata_another_writer_changed_since_it_was_read(testbed, env, s3):
    taken = _json(run_cli(env, "backup", "--json", check=0))
    rotated = config.settings_from_env(dict(env, BACKUP_ENCRYPTION_KEY=new_key(),
                                            BACKUP_DECRYPTION_KEYS=env["BACKUP_ENCRYPTION_KEY"]))
    store = _racing_store(env)
    other = _json(run_cli(env, "backup", "--json", check=0))  # a document the other writer puts in its place
    assert other["name"] != taken["name"]  # taken in the same second, it waited for the next one
    concurrent = _get(s3, env["S3_BUCKET"], other["metadata_key"])

    def other_writer(key):
        if key == taken["metadata_key"]:
            _put(s3, env["S3_BUCKET"], key, concurrent)  # e.g. a second rekey, or a restore of the old version

    store.after_read = other_writer
    result = rekey.run_rekey(rotated, store=store)
    failed = [item for item in result["backups"] if item["status"] == "failed"]
    assert [item["name"] for item in failed] == [taken["name"]] and "another writer got there first" in failed[0]["error"]
    assert _get(s3, env["S3_BUCKET"], taken["metadata_key"]) == concurrent  # the other writer's document stands


def test_two_backups_claiming_one_name_cannot_both_commit(testbed, env, s3):
    settings = config.settings_from_env(env)
    when = datetime.datetime.now(UTC).replace(microsecond=0)
    first = backup.run_backup(settings, now=when)
    first_etag = s3.head_object(Bucket=env["S3_BUCKET"], Key=first["object_key"])["ETag"]
    store = _racing_store(env)
    store.exists_lies = True  # the second run's check raced the first one's upload
    with pytest.raises(ConflictError, match="another writer got there first"):
        backup.run_backup(settings, store=store, now=when)
    assert s3.head_object(Bucket=env["S3_BUCKET"], Key=first["object_key"])["ETag"] == first_etag
    prefix = config.normalize_prefix(env["S3_PREFIX"])
    assert s3.list_multipart_uploads(Bucket=env["S3_BUCKET"], Prefix=prefix).get("Uploads", []) == []
    verified = restore.run_verify(settings, backup=first["name"])
    assert verified["checksum_sha256"] == first["checksum_sha256"]


def test_a_metadata_write_whose_answer_was_lost_is_read_back_not_undone(testbed, env, s3):
    settings = config.settings_from_env(env)
    store = _racing_store(env)
    store.lose_put_answers = True
    taken = backup.run_backup(settings, store=store)
    assert s3.head_object(Bucket=env["S3_BUCKET"], Key=taken["object_key"])["ContentLength"] == taken["size_bytes"]
    assert _json(run_cli(env, "verify", "--json", check=0))["name"] == taken["name"]
