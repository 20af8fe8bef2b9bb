# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Issue 11, part 3: `quankey-backup adopt` takes the seed's backups over, verified, idempotent and resumable.

The seed's backups are made with stock tools (tests/seedbackup.py); adoption and everything after it go
through the installed command on the real test bed.
"""

import base64
import datetime
import json
import os

import pytest

from ansible_collections.quankey.backup.plugins.module_utils import config
from ansible_collections.quankey.backup.plugins.module_utils.workflows import adopt, backup, restore, wiring
from hostcommand import new_name, run_cli
from sampledb import table_digests
from seedbackup import seed_backup, seed_keys

UTC = datetime.timezone.utc


@pytest.fixture
def env(testbed, source):
    values = testbed.backup_env(source)
    values.update(S3_PREFIX=new_name("adopt"), BACKUP_HOST_ID="db1",
                  BACKUP_SEED_PASSPHRASE="32_byte_encryption_key",  # the seed's own placeholder, used as written
                  BACKUP_ENCRYPTION_KEY=base64.b64encode(os.urandom(32)).decode("ascii"))
    return values


def _json(proc):
    return json.loads(proc.stdout)


def _seed_history(testbed, env, tmp_path):
    """Three seed backups of different kinds, as a seed host left them: (name, options) oldest first."""
    # a nightly run's, the newest 20 hours old whenever the test runs (yesterday's 03:00 is past the 36-hour age limit
    # from 15:00 UTC on)
    now = datetime.datetime.now(UTC).replace(microsecond=0)
    days = [now - datetime.timedelta(hours=20 + 24 * ago) for ago in (2, 1, 0)]
    made = [("quankey_backup_" + day.strftime("%Y%m%d_%H%M%S"), options) for day, options in zip(days, [
        dict(enc_options="-md md5"), dict(dump_options="", compress="gzip"), dict()])]
    for name, options in made:
        seed_backup(testbed, env, tmp_path, name, passphrase=env["BACKUP_SEED_PASSPHRASE"], **options)
    return [name for name, _options in made]


def test_adoption_copies_every_seed_backup_verified_and_a_second_run_adopts_nothing(testbed, source, env, s3, tmp_path):
    names = _seed_history(testbed, env, tmp_path)
    dry = _json(run_cli(env, "adopt", "--dry-run", "--json", check=0))
    assert [item["status"] for item in dry["backups"]] == ["would adopt"] * 3
    assert [item["payload"] for item in dry["backups"]] == ["custom", "sql", "custom"]
    assert "EVP_BytesToKey MD5" in dry["backups"][0]["kdf"]
    assert _json(run_cli(env, "list", "--json", check=0))["backups"][0]["layout"] == "seed"  # nothing written

    done = _json(run_cli(env, "adopt", "--json", check=0))
    assert (done["adopted"], done["failed"], done["changed"]) == (3, 0, True)
    assert all(item["copy_verified"] for item in done["backups"])
    listed = _json(run_cli(env, "list", "--details", "--json", check=0))["backups"]
    ours = [item for item in listed if item["host"] == "db1"]
    assert sorted(item["name"] for item in ours) == sorted(names)  # original names and times
    assert all(item["signature"].startswith("valid") for item in ours)

    # latest is now the newest adopted one, no --allow-seed needed; each restores equal to its source
    for name in names:
        target = new_name("adopted")
        restored = _json(run_cli(env, "restore", "--backup", name, "--target-db", target, "--json", check=0))
        assert restored["layout"] == "host" and restored["trusted"] is True
        assert table_digests(testbed.pg, target) == table_digests(testbed.pg, source)
    report = _json(run_cli(env, "health", "--json", "--min-size-bytes", "1024", check=0))
    assert report["latest"]["name"] == names[-1] and report["status"] == "ok", report["findings"]

    again = _json(run_cli(env, "adopt", "--json", check=0))
    assert (again["adopted"], again["already_adopted"], again["changed"]) == (0, 3, False)

    # a dry run verifies the copies the deletion would rely on, and deletes nothing
    dry_delete = _json(run_cli(env, "adopt", "--dry-run", "--delete-originals", "--json", check=0))
    assert dry_delete["originals_deleted"] == 0 and dry_delete["changed"] is False
    assert all(item["copy_verified"] and not item.get("original_deleted") for item in dry_delete["backups"])
    for name in names:
        obj, meta = seed_keys(env, name)
        assert s3.list_objects_v2(Bucket=env["S3_BUCKET"], Prefix=meta)["KeyCount"] == 1
        assert s3.list_objects_v2(Bucket=env["S3_BUCKET"], Prefix=obj)["KeyCount"] == 1

    gone = _json(run_cli(env, "adopt", "--delete-originals", "--json", check=0))
    assert gone["originals_deleted"] == 3 and all(item["copy_verified"] for item in gone["backups"])
    for name in names:
        obj, meta = seed_keys(env, name)
        assert s3.list_objects_v2(Bucket=env["S3_BUCKET"], Prefix=meta)["KeyCount"] == 0
        assert s3.list_objects_v2(Bucket=env["S3_BUCKET"], Prefix=obj)["KeyCount"] == 0
    assert _json(run_cli(env, "adopt", "--json", check=0))["backups"] == []


def test_an_interrupted_adoption_is_resumed_and_a_bad_backup_fails_alone(testbed, source, env, s3, tmp_path):
    names = _seed_history(testbed, env, tmp_path)
    # the newest was modified in the bucket: its checksum no longer matches
    obj, _meta = seed_keys(env, names[-1])
    body = bytearray(s3.get_object(Bucket=env["S3_BUCKET"], Key=obj)["Body"].read())
    body[len(body) // 2] ^= 1
    s3.put_object(Bucket=env["S3_BUCKET"], Key=obj, Body=bytes(body))
    # an earlier run was killed after uploading a copy of the oldest but before committing it
    settings = config.settings_from_env(env)
    leftover = wiring.open_store(settings)
    leftover.put_bytes(config.normalize_prefix(env["S3_PREFIX"]) + "backups/postgresql/db1/%s/%s.encrypted"
                       % (source, names[0]), b"half a copy", content_type="application/octet-stream")

    result = _json(run_cli(env, "adopt", "--json", check=6))
    status = dict((item["name"], item) for item in result["backups"])
    assert status[names[0]]["status"] == "adopted" and status[names[1]]["status"] == "adopted"
    assert status[names[-1]]["status"] == "failed" and "the object was modified" in status[names[-1]]["error"]
    assert s3.list_objects_v2(Bucket=env["S3_BUCKET"], Prefix=obj)["KeyCount"] == 1  # the original is untouched
    uploads = s3.list_multipart_uploads(Bucket=env["S3_BUCKET"], Prefix=env["S3_PREFIX"]).get("Uploads", [])
    assert uploads == []


def test_a_backup_of_the_same_name_that_is_not_the_copy_is_never_overwritten(testbed, source, env, tmp_path):
    name = "quankey_backup_" + datetime.datetime.now(UTC).strftime("%Y%m%d_%H%M%S")
    seed_backup(testbed, env, tmp_path, name, passphrase=env["BACKUP_SEED_PASSPHRASE"])
    when = datetime.datetime.strptime(name[-15:], "%Y%m%d_%H%M%S").replace(tzinfo=UTC)
    taken = backup.run_backup(config.settings_from_env(dict(env, BACKUP_NAME="quankey")), now=when)
    assert taken["name"] == name
    result = adopt.run_adopt(config.settings_from_env(env))
    assert result["failed"] == 1 and "is not this seed backup's copy" in result["backups"][0]["error"]
    assert restore.run_verify(config.settings_from_env(env), backup=name)["checksum_sha256"] == taken["checksum_sha256"]
