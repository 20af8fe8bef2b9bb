# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Issue 18 items 1, 2 (and 7's missing segment) on the real test bed: `wal-push` and `wal-fetch` with real WAL.

A cluster of its own runs with archive_mode=on; its archive_command copies each file it completes into a staging
directory (the postgres OS user cannot run this venv's interpreter, which lives under root's 0700 home), and the
tests push those real segments with `quankey-backup wal-push` as archive_command would, then fetch them back as
restore_command would (relative %p, in a data directory). The objects are checked encrypted, a fetch equals the
segment bytewise, a same-content push succeeds and another content is refused, a missing segment is exit 1 at the
archive's end and a named hole in the middle, a changed or moved object is refused, hybrid-pq pushes without a
private key, prefetched segments serve the next fetches and ready segments are pushed ahead."""

import base64
import json
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from hostcommand import CLI, new_name, run_cli
from testbed import ArchivingCluster

SEGMENT = 16 * 1024 * 1024


@pytest.fixture(scope="module")
def archived():
    """``(staging directory, segment names)``: three real WAL segments the cluster completed and archived."""
    staging = Path(tempfile.mkdtemp(prefix="quankey-wal-", dir="/tmp"))
    try:
        if os.geteuid() == 0:  # the server runs as the postgres OS user, and writes there
            entry = pwd.getpwnam("postgres")
            os.chown(staging, entry.pw_uid, entry.pw_gid)
        with ArchivingCluster(staging) as cluster:
            cluster.psql("CREATE TABLE ledger (id serial PRIMARY KEY, note text)")
            for round_ in range(3):
                cluster.psql("INSERT INTO ledger (note) SELECT 'round %d row ' || g FROM generate_series(1, 2000) g"
                             % round_)
                cluster.psql("SELECT pg_switch_wal()")
            deadline = time.monotonic() + 60
            names = []
            while time.monotonic() < deadline:
                names = sorted(name for name in os.listdir(staging) if len(name) == 24)
                if len(names) >= 3:
                    break
                time.sleep(0.2)
        assert len(names) >= 3, "the cluster archived %s" % os.listdir(staging)
        yield staging, names[:3]
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@pytest.fixture
def env(testbed):
    return dict(testbed.backup_env("postgres"), S3_PREFIX=new_name("wal"), BACKUP_HOST_ID="db1",
                S3_RETRY_WINDOW_SECONDS="2")


def _prefix(env):
    return env["S3_PREFIX"].strip("/") + "/"


def _key(env, name):
    return "%swal/db1/%s/%s" % (_prefix(env), name[:8], name)


def _push_all(env, staging, names):
    for name in names:
        run_cli(env, "wal-push", str(staging / name), check=0)


def _in_datadir(env, datadir, *args):
    """The host command as PostgreSQL runs archive_command and restore_command: in the data directory."""
    (datadir / "pg_wal").mkdir(parents=True, exist_ok=True)
    full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/root"),
                "LC_ALL": "C.UTF-8"}
    full_env.update(env)
    return subprocess.run([CLI] + list(args), env=full_env, cwd=datadir, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=120, check=False)


def _fetch(env, name, datadir, *extra):
    """wal-fetch as restore_command runs it: %p relative to the data directory."""
    return _in_datadir(env, datadir, "wal-fetch", name, "pg_wal/RECOVERYXLOG", *extra)


def test_real_segments_are_stored_encrypted_and_fetched_back_bytewise(env, archived, s3, tmp_path):
    staging, names = archived
    _push_all(env, staging, names)
    for name in names:
        stored = s3.get_object(Bucket=env["S3_BUCKET"], Key=_key(env, name))["Body"].read()
        plain = (staging / name).read_bytes()
        assert len(plain) == SEGMENT
        assert stored[:4] == b"QKWL" and b"QKBK" in stored[:8192]
        assert plain[:64] not in stored and plain[8192:8256] not in stored  # the page header, a page of records
        assert len(stored) < len(plain) // 2  # compressed before it was encrypted
    for name in names:
        done = _fetch(env, name, tmp_path / "restore", "--prefetch", "0")
        assert done.returncode == 0, done.stderr
        assert (tmp_path / "restore" / "pg_wal" / "RECOVERYXLOG").read_bytes() == (staging / name).read_bytes()
        assert not list((tmp_path / "restore" / "pg_wal").glob(".RECOVERYXLOG*"))  # no temporary file left


def test_a_second_push_of_the_same_content_succeeds_and_another_content_is_refused(env, archived, tmp_path):
    staging, names = archived
    _push_all(env, staging, names[:1])
    again = run_cli(env, "wal-push", str(staging / names[0]), "--json", check=0)
    assert '"status": "already archived"' in again.stdout
    other = tmp_path / names[0]
    data = bytearray((staging / names[0]).read_bytes())
    data[100000] ^= 0xFF
    other.write_bytes(bytes(data))
    refused = run_cli(env, "wal-push", str(other), check=8)
    assert "WAL file %s was NOT archived" % names[0] in refused.stderr and "DIFFERENT" in refused.stderr


def test_the_archive_end_is_exit_1_and_a_hole_names_the_missing_segment(env, archived, s3, tmp_path):
    staging, names = archived
    _push_all(env, staging, names)
    after = "%s%016X" % (names[-1][:8], int(names[-1][8:], 16) + 5)
    end = _fetch(env, after, tmp_path / "r1")
    assert end.returncode == 1, end.stderr
    assert "is not in the archive" in end.stderr
    assert not (tmp_path / "r1" / "pg_wal" / "RECOVERYXLOG").exists()
    history = _fetch(env, "00000002.history", tmp_path / "r1")
    assert history.returncode == 1, history.stderr
    s3.delete_object(Bucket=env["S3_BUCKET"], Key=_key(env, names[1]))
    hole = _fetch(env, names[1], tmp_path / "r2")
    assert hole.returncode == 128, hole.stderr
    assert "WAL segment %s is MISSING from the archive" % names[1] in hole.stderr
    assert "later segment %s" % names[2] in hole.stderr


def test_a_changed_or_moved_object_is_refused(env, archived, s3, tmp_path):
    staging, names = archived
    _push_all(env, staging, names)
    bucket = env["S3_BUCKET"]
    blob = bytearray(s3.get_object(Bucket=bucket, Key=_key(env, names[0]))["Body"].read())
    blob[-100] ^= 0x01  # a bit of the encrypted data
    s3.put_object(Bucket=bucket, Key=_key(env, names[0]), Body=bytes(blob))
    flipped = _fetch(env, names[0], tmp_path / "a", "--prefetch", "0")
    assert flipped.returncode == 128, flipped.stderr
    assert "failed" in flipped.stderr and names[0] in flipped.stderr
    assert not (tmp_path / "a" / "pg_wal" / "RECOVERYXLOG").exists()

    original = s3.get_object(Bucket=bucket, Key=_key(env, names[1]))["Body"].read()
    at = original.index(b'"checksum_sha256":"') + len(b'"checksum_sha256":"')
    forged = original[:at] + (b"0" if original[at:at + 1] != b"0" else b"1") + original[at + 1:]  # signed field changed
    s3.put_object(Bucket=bucket, Key=_key(env, names[1]), Body=forged)
    resigned = _fetch(env, names[1], tmp_path / "b", "--prefetch", "0")
    assert resigned.returncode == 128, resigned.stderr
    assert "signature is invalid" in resigned.stderr

    s3.copy_object(Bucket=bucket, Key=_key(env, names[2]), CopySource={"Bucket": bucket, "Key": _key(env, names[1])})
    s3.put_object(Bucket=bucket, Key=_key(env, names[2]), Body=original)  # segment 1's valid object, at 2's place
    moved = _fetch(env, names[2], tmp_path / "c", "--prefetch", "0")
    assert moved.returncode == 128, moved.stderr
    assert "holds the document of another WAL file" in moved.stderr


def test_prefetched_segments_serve_the_next_calls(env, archived, s3, tmp_path):
    staging, names = archived
    _push_all(env, staging, names)
    first = _fetch(env, names[0], tmp_path, "--json")
    assert first.returncode == 0, first.stderr
    spool = tmp_path / "pg_wal" / ".quankey-prefetch" / "db1"
    assert sorted(os.listdir(spool)) == names[1:]
    assert os.stat(spool).st_mode & 0o777 == 0o700
    s3.delete_object(Bucket=env["S3_BUCKET"], Key=_key(env, names[1]))  # served from the spool, not the bucket
    second = _fetch(env, names[1], tmp_path)
    assert second.returncode == 0, second.stderr
    assert (tmp_path / "pg_wal" / "RECOVERYXLOG").read_bytes() == (staging / names[1]).read_bytes()
    assert sorted(os.listdir(spool)) == names[2:]


def test_hybrid_pq_push_needs_no_private_key_and_fetch_needs_it(env, archived, tmp_path):
    staging, names = archived
    identity = tmp_path / "identity"
    made = run_cli(env, "keygen", "--output", str(identity), "--json", check=0)
    public = [line for line in made.stdout.split('"') if line.startswith("qkpq1-pub-")][0]
    signing = base64.b64encode(os.urandom(32)).decode("ascii")
    pusher = dict(env, BACKUP_ENCRYPTION="hybrid-pq", BACKUP_RECIPIENTS=public, BACKUP_SIGNING_KEY=signing)
    del pusher["BACKUP_ENCRYPTION_KEY"]
    run_cli(pusher, "wal-push", str(staging / names[0]), check=0)
    run_cli(pusher, "wal-push", str(staging / names[0]), check=0)  # compared by its signed document, no private key
    restorer = dict(pusher, BACKUP_IDENTITY_FILE=str(identity))
    done = _fetch(restorer, names[0], tmp_path / "r", "--prefetch", "0")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "r" / "pg_wal" / "RECOVERYXLOG").read_bytes() == (staging / names[0]).read_bytes()
    without = _fetch(pusher, names[0], tmp_path / "r2", "--prefetch", "0")
    assert without.returncode == 128 and "no private key" in without.stderr, without.stderr
    shutil.rmtree(tmp_path / "r2", ignore_errors=True)


def test_segments_marked_ready_are_pushed_ahead_in_one_call(env, archived, s3, tmp_path):
    """As after a burst of writes: every segment in pg_wal is marked .ready; the first call pushes the others too, and
    the archiver's calls for them find their markers."""
    staging, names = archived
    pg_wal = tmp_path / "pg_wal"
    (pg_wal / "archive_status").mkdir(parents=True)
    for name in names:
        shutil.copyfile(staging / name, pg_wal / name)
        (pg_wal / "archive_status" / (name + ".ready")).write_text("")
    label = names[0] + ".00000028.backup"  # a base backup's history file, as pg_backup_stop writes it
    (pg_wal / label).write_text("START WAL LOCATION: 0/%s (file %s)\nLABEL: pg_basebackup base backup\n"
                                % (names[0][-8:], names[0]))
    (pg_wal / "archive_status" / (label + ".ready")).write_text("")
    first = _in_datadir(env, tmp_path, "wal-push", "pg_wal/" + names[0], "--json")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["pushed_ahead"] == [label] + names[1:]  # the history file first, whatever the limit
    listed = s3.list_objects_v2(Bucket=env["S3_BUCKET"], Prefix=_prefix(env) + "wal/")["Contents"]
    assert sorted(item["Key"] for item in listed) == sorted(_key(env, name) for name in names + [label])
    for name in [label] + names[1:]:
        again = _in_datadir(env, tmp_path, "wal-push", "pg_wal/" + name, "--json")
        assert again.returncode == 0 and json.loads(again.stdout)["status"] == "archived ahead", again.stderr
    assert os.listdir(pg_wal / ".quankey-pushed") == []
    done = _fetch(env, names[2], tmp_path / "restore", "--prefetch", "0")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "restore" / "pg_wal" / "RECOVERYXLOG").read_bytes() == (staging / names[2]).read_bytes()
