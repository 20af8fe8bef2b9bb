# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Keyring, rotation (rekey) and health's key checks end to end: real PostgreSQL, S3 on moto_server,
the installed ``quankey-backup`` command, boto3 to look at the objects."""

import base64
import json
import os

import pytest

from ansible_collections.quankey.backup.plugins.module_utils.formats import crypto, signing
from hostcommand import new_name, run_cli
from sampledb import table_digests


def new_key():
    return base64.b64encode(os.urandom(32)).decode("ascii")


def kid(key_b64):
    return crypto.key_id(base64.b64decode(key_b64))


@pytest.fixture
def env(testbed, source):
    """The seed's variables with the old key active, each test under its own S3 prefix."""
    values = testbed.backup_env(source)
    values.update(S3_PREFIX=new_name("k"), BACKUP_HOST_ID="db1", BACKUP_ENCRYPTION_KEY=new_key())
    return values


def _backup(env):
    """One backup through the command, under a name stem of its own (two in the same second must not collide)."""
    return json.loads(run_cli(dict(env, BACKUP_NAME=new_name("b")), "backup", "--json", check=0).stdout)


def _rotated(env, new, *old):
    """The variables after a rotation: ``new`` active, the ``old`` keys in BACKUP_DECRYPTION_KEYS."""
    return dict(env, BACKUP_ENCRYPTION_KEY=new, BACKUP_DECRYPTION_KEYS=", ".join(old))


def _object_state(s3, bucket, key):
    head = s3.head_object(Bucket=bucket, Key=key)
    return head["ETag"], head["ContentLength"], head["LastModified"]


def _metadata(s3, bucket, key):
    return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def _no_secrets(env, *procs):
    for proc in procs:
        for name in ("BACKUP_ENCRYPTION_KEY", "BACKUP_DECRYPTION_KEYS"):
            for value in (env.get(name) or "").replace(",", " ").split():
                assert value not in proc.stdout and value not in proc.stderr, name


def test_restore_after_rotation_with_only_the_keyring(testbed, source, env):
    old_key = env["BACKUP_ENCRYPTION_KEY"]
    before = _backup(env)
    assert before["key_id"] == kid(old_key)
    new = new_key()
    rotated = _rotated(env, new, old_key)
    after = _backup(rotated)  # new backups are wrapped with the new, active key
    assert after["key_id"] == kid(new)

    target = new_name("rotated")
    proc = run_cli(rotated, "restore", "--backup", before["name"], "--target-db", target, "--json", check=0)
    assert json.loads(proc.stdout)["target_db"] == target
    assert table_digests(testbed.pg, target) == table_digests(testbed.pg, source)
    run_cli(rotated, "verify", "--backup", after["name"], check=0)

    only_new = dict(env, BACKUP_ENCRYPTION_KEY=new)
    wrong = run_cli(only_new, "verify", "--backup", before["name"], check=6)
    assert "wrapped with key %s; the key given is %s" % (kid(old_key), kid(new)) in wrong.stderr
    only_old_as_keyring = dict(env, BACKUP_ENCRYPTION_KEY="", BACKUP_DECRYPTION_KEYS=old_key)
    run_cli(only_old_as_keyring, "verify", "--backup", before["name"], check=0)  # restore hosts need no active key
    _no_secrets(rotated, proc, wrong)


def test_rekey_rewrites_only_metadata_then_the_old_key_fails_and_the_new_one_works(testbed, source, env, s3):
    bucket, old_key, new = env["S3_BUCKET"], env["BACKUP_ENCRYPTION_KEY"], new_key()
    taken = [_backup(env), _backup(env)]
    objects = dict((item["object_key"], _object_state(s3, bucket, item["object_key"])) for item in taken)
    metadata = dict((item["metadata_key"], _metadata(s3, bucket, item["metadata_key"])) for item in taken)
    rotated = _rotated(env, new, old_key)

    dry = run_cli(rotated, "rekey", "--dry-run", "--json", check=0)
    plan = json.loads(dry.stdout)
    assert (plan["would_rekey"], plan["rekeyed"], plan["failed"], plan["dry_run"]) == (2, 0, 0, True)
    assert {(item["from_key_id"], item["to_key_id"], item["status"]) for item in plan["backups"]} == {
        (kid(old_key), kid(new), "would rekey")}
    human = run_cli(rotated, "rekey", "--dry-run", check=0).stdout
    assert human.startswith("would rekey 2 backup(s) to aes-256-gcm key %s" % kid(new))
    for key, document in metadata.items():
        assert _metadata(s3, bucket, key) == document  # the dry run changed nothing
    run_cli(env, "verify", check=0)

    done = run_cli(rotated, "rekey", "--json", check=0)
    result = json.loads(done.stdout)
    assert (result["rekeyed"], result["unchanged"], result["failed"], result["active_key_id"]) == (2, 0, 0, kid(new))
    assert result["keyring_key_ids"] == [kid(new), kid(old_key)]
    for key, state in objects.items():
        assert _object_state(s3, bucket, key) == state  # same ETag, size and time: the data object was not written
    for key, document in metadata.items():
        rewritten = _metadata(s3, bucket, key)
        assert rewritten["key_id"] == kid(new) and rewritten["envelope"]["key_id"] == kid(new)
        assert rewritten["envelope"] != document["envelope"]
        assert rewritten["signature"]["key_id"] == kid(new) and document["signature"]["key_id"] == kid(old_key)
        cleared = dict(key_id=None, envelope=None, signature=None)
        assert dict(rewritten, **cleared) == dict(document, **cleared)

    wrong = run_cli(env, "verify", check=6)  # the old key alone
    assert "wrapped with key %s; the key given is %s" % (kid(new), kid(old_key)) in wrong.stderr
    only_new = dict(env, BACKUP_ENCRYPTION_KEY=new)
    for item in taken:
        run_cli(only_new, "verify", "--backup", item["name"], check=0)
    target = new_name("rekeyed")
    run_cli(only_new, "restore", "--target-db", target, check=0)
    assert table_digests(testbed.pg, target) == table_digests(testbed.pg, source)

    again = json.loads(run_cli(rotated, "rekey", "--json", check=0).stdout)
    assert (again["rekeyed"], again["unchanged"], again["changed"]) == (0, 2, False)
    _no_secrets(rotated, dry, done, wrong)


def test_rekey_fails_closed_per_backup_and_goes_on(testbed, source, env, s3):
    bucket, old_key, new, lost = env["S3_BUCKET"], env["BACKUP_ENCRYPTION_KEY"], new_key(), new_key()
    opened = _backup(env)
    unknown = _backup(dict(env, BACKUP_ENCRYPTION_KEY=lost))
    lost_metadata = _metadata(s3, bucket, unknown["metadata_key"])

    proc = run_cli(_rotated(env, new, old_key), "rekey", "--json", check=6)
    result = json.loads(proc.stdout)
    status = dict((item["name"], item) for item in result["backups"])
    assert status[opened["name"]]["status"] == "rekeyed"
    assert status[unknown["name"]]["status"] == "failed"
    assert "wrapped with key %s" % kid(lost) in status[unknown["name"]]["error"]
    assert (result["rekeyed"], result["failed"]) == (1, 1)
    assert _metadata(s3, bucket, unknown["metadata_key"]) == lost_metadata  # left as it was
    assert _metadata(s3, bucket, opened["metadata_key"])["key_id"] == kid(new)
    errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and unknown["name"] in errors[0] and "Traceback" not in proc.stderr


@pytest.mark.parametrize("attacker, reason", [
    ("writes the bucket", "metadata signature invalid for backup"),
    ("also holds the signing key", "copied from another backup"),
])
def test_rekey_of_a_swapped_envelope_is_refused(testbed, source, env, s3, attacker, reason):
    """An envelope swapped in from another backup is not re-wrapped: the signature catches it, and beneath it the
    envelope itself (format version 2 binds the data key's wrap to its backup's host, database and name; the key
    commitment of the object's header would be the third line)."""
    bucket, old_key = env["S3_BUCKET"], env["BACKUP_ENCRYPTION_KEY"]
    first, second = _backup(env), _backup(env)
    swapped = _metadata(s3, bucket, second["metadata_key"])
    swapped["envelope"] = _metadata(s3, bucket, first["metadata_key"])["envelope"]
    if attacker == "also holds the signing key":
        master = base64.b64decode(old_key)
        swapped = signing.sign_metadata(swapped, kid(old_key), signing.derive_signing_key(master))
    s3.put_object(Bucket=bucket, Key=second["metadata_key"], Body=json.dumps(swapped).encode())
    proc = run_cli(_rotated(env, new_key(), old_key), "rekey", "--json", check=6)
    status = dict((item["name"], item) for item in json.loads(proc.stdout)["backups"])
    assert status[second["name"]]["status"] == "failed" and reason in status[second["name"]]["error"]
    assert status[first["name"]]["status"] == "rekeyed"
    assert _metadata(s3, bucket, second["metadata_key"]) == swapped


def test_rekey_scope_is_this_host_unless_all(testbed, source, env, s3):
    old_key, new = env["BACKUP_ENCRYPTION_KEY"], new_key()
    mine, theirs = _backup(env), _backup(dict(env, BACKUP_HOST_ID="db2"))
    rotated = _rotated(env, new, old_key)
    result = json.loads(run_cli(rotated, "rekey", "--json", check=0).stdout)
    assert [item["name"] for item in result["backups"]] == [mine["name"]]
    result = json.loads(run_cli(rotated, "rekey", "--all", "--json", check=0).stdout)
    assert {(item["host"], item["status"]) for item in result["backups"]} == {("db1", "unchanged"), ("db2", "rekeyed")}
    assert _metadata(s3, env["S3_BUCKET"], theirs["metadata_key"])["key_id"] == kid(new)


def test_keyring_file_is_refused_unless_mode_0600(testbed, source, env, tmp_path):
    old_key, new = env["BACKUP_ENCRYPTION_KEY"], new_key()
    taken = _backup(env)
    path = tmp_path / "keyring"
    path.write_text("# retired keys, one per line\n%s  # the first key\n" % old_key)
    path.chmod(0o644)
    with_file = dict(env, BACKUP_ENCRYPTION_KEY=new, BACKUP_KEYRING_FILE=str(path))

    for command in (["verify"], ["restore", "--target-db", new_name("refused")], ["rekey"]):
        proc = run_cli(with_file, *command, check=3)
        errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
        assert len(errors) == 1 and "Traceback" not in proc.stderr
        assert "keyring file %s is mode 0644" % path in errors[0] and "chmod 0600 %s" % path in errors[0]
        assert old_key not in proc.stderr
    report = json.loads(run_cli(with_file, "health", "--json", check=1).stdout)
    assert any(f["rule"] == "encryption" and "chmod 0600" in f["message"] for f in report["findings"])

    path.chmod(0o600)
    verified = json.loads(run_cli(with_file, "verify", "--json", check=0).stdout)
    assert verified["name"] == taken["name"] and verified["key_id"] == kid(old_key)
    assert json.loads(run_cli(with_file, "rekey", "--json", check=0).stdout)["rekeyed"] == 1
    run_cli(dict(env, BACKUP_ENCRYPTION_KEY=new), "verify", check=0)


def test_health_warns_when_a_recent_backup_is_wrapped_with_a_key_it_does_not_hold(testbed, source, env):
    old_key, new = env["BACKUP_ENCRYPTION_KEY"], new_key()
    taken = _backup(env)
    report = json.loads(run_cli(env, "health", "--json", check=0).stdout)
    assert report["status"] == "ok" and report["keyring_key_ids"] == [kid(old_key)]

    only_new = dict(env, BACKUP_ENCRYPTION_KEY=new)
    proc = run_cli(only_new, "health", "--json", check=1)
    report = json.loads(proc.stdout)
    assert [(f["rule"], f["severity"]) for f in report["findings"]] == [("encryption", "warning")]
    assert report["findings"][0]["message"].startswith(
        "backup %s is wrapped with key %s, which this host does not hold: it cannot be restored here"
        % (taken["name"], kid(old_key)))
    human = run_cli(only_new, "health", check=1).stdout
    assert human.startswith("WARNING") and kid(old_key) in human

    run_cli(_rotated(env, new, old_key), "health", check=0)  # the old key in the keyring: fine
    no_keys = dict(env, BACKUP_ENCRYPTION_KEY="")
    assert json.loads(run_cli(no_keys, "health", "--json", check=0).stdout)["keyring_key_ids"] == []  # not checked
    _no_secrets(only_new, proc)
