# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Prune, rekey, health and adopt on fakes of S3 and PostgreSQL: what each leaves in the bucket when something
is planted, races it or fails."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import datetime
import hashlib
import json

import pytest

from ansible_collections.quankey.backup.plugins.module_utils.catalog import documents, layout
from ansible_collections.quankey.backup.plugins.module_utils.errors import (EXIT_REFUSED, ConfigError, PostgresError,
                                                                            StorageError)
from ansible_collections.quankey.backup.plugins.module_utils.formats import compression, crypto, openssl_enc
from ansible_collections.quankey.backup.plugins.module_utils.workflows import adopt, backup, health, prune, rekey, restore
from ansible_collections.quankey.backup.tests.unit.plugins.module_utils.workflows.fakes import KEY, NOW, archive

NEW_KEY = base64.b64encode(hashlib.sha256(b"the next master key").digest()).decode("ascii")
SEED_PASSPHRASE = "correct horse battery staple"


def _days_ago(days):
    return NOW - datetime.timedelta(days=days)


def _rewrite(store, key, change):
    document = json.loads(store.data(key).decode())
    change(document)
    store.put_object(key, documents.encode_metadata(document))


# --------------------------------------------------------------------------- prune

def test_prune_keeps_the_newest_good_backups_and_planted_ones_do_not_count(make_settings, store, pg):
    settings = make_settings(BACKUP_RETENTION_DAYS="7", BACKUP_MIN_KEEP="2")
    genuine = [backup.run_backup(settings, store=store, pg=pg, now=_days_ago(days)) for days in (30, 29, 28, 27)]
    forged, unsigned = [backup.run_backup(settings, store=store, pg=pg, now=_days_ago(days)) for days in (2, 1)]
    _rewrite(store, forged["metadata_key"], lambda document: document.update(table_count=99))  # signature broken
    _rewrite(store, unsigned["metadata_key"], lambda document: document.pop("signature"))
    result = prune.run_prune(settings, store=store, pg=pg, now=NOW)
    kept_genuine = [genuine[3]["name"], genuine[2]["name"]]  # the newest two that verify, though past retention
    assert sorted(result["deleted"]) == sorted([genuine[0]["name"], genuine[1]["name"]])
    assert sorted(result["kept"]) == sorted(kept_genuine + [forged["name"], unsigned["name"]])  # young: kept by age
    for gone in genuine[:2]:
        assert store.data(gone["object_key"]) is None and store.data(gone["metadata_key"]) is None
    for kept in genuine[2:]:
        assert store.data(kept["object_key"]) is not None and store.data(kept["metadata_key"]) is not None
        assert restore.run_verify(settings, backup=kept["name"], store=store, pg=pg)["trusted"] is True


def test_prune_never_deletes_the_min_keep_newest_good_backups_however_old(make_settings, store, pg):
    settings = make_settings(BACKUP_RETENTION_DAYS="7", BACKUP_MIN_KEEP="3")
    taken = [backup.run_backup(settings, store=store, pg=pg, now=_days_ago(days)) for days in (60, 50, 40, 30)]
    cut = taken[3]
    store.put_object(cut["object_key"], store.data(cut["object_key"])[:100])  # the newest is cut short: not good
    result = prune.run_prune(settings, store=store, pg=pg, now=NOW)
    assert sorted(result["kept"]) == sorted(item["name"] for item in taken[:3])
    assert result["deleted"] == [cut["name"]] and store.keys() == sorted(
        key for item in taken[:3] for key in (item["object_key"], item["metadata_key"]))


def test_prune_without_a_key_to_verify_signatures_refuses_before_deleting(make_settings, store, pg):
    settings = make_settings(BACKUP_RETENTION_DAYS="7", BACKUP_MIN_KEEP="1")
    for days in (30, 20):
        backup.run_backup(settings, store=store, pg=pg, now=_days_ago(days))
    before = store.keys()
    keyless = make_settings(BACKUP_RETENTION_DAYS="7", BACKUP_MIN_KEEP="1", BACKUP_ENCRYPTION_KEY=None)
    with pytest.raises(ConfigError, match="BACKUP_MIN_KEEP backups whose metadata signature verifies.*BACKUP_SIGNING_KEY"):
        prune.run_prune(keyless, store=store, pg=pg, now=NOW)
    assert store.keys() == before and [key for action, key in store.requests if action == "delete"] == []


# --------------------------------------------------------------------------- rekey

def test_rekey_leaves_metadata_changed_since_it_was_read_and_rekeys_the_others(make_settings, store, pg):
    settings = make_settings()
    taken = [backup.run_backup(settings, store=store, pg=pg, now=_days_ago(days)) for days in (3, 2, 1)]
    raced = taken[1]
    theirs = store.data(raced["metadata_key"]) + b"\n"  # another writer's version (another rekey, say)
    store.inject("put_bytes", key=raced["metadata_key"], before=lambda key: store.put_object(key, theirs))
    rotated = make_settings(BACKUP_ENCRYPTION_KEY=NEW_KEY, BACKUP_DECRYPTION_KEYS=KEY)
    result = rekey.run_rekey(rotated, store=store)
    status = dict((item["name"], item) for item in result["backups"])
    assert status[raced["name"]]["status"] == rekey.FAILED and "another writer got there first" in status[raced["name"]][
        "error"]
    assert (result["rekeyed"], result["failed"], result["exit_code"]) == (2, 1, EXIT_REFUSED)
    assert store.data(raced["metadata_key"]) == theirs  # the other writer's document stands
    new_id = crypto.key_id(base64.b64decode(NEW_KEY))
    only_new = make_settings(BACKUP_ENCRYPTION_KEY=NEW_KEY)
    for item in (taken[0], taken[2]):
        assert json.loads(store.data(item["metadata_key"]).decode())["key_id"] == new_id
        assert restore.run_verify(only_new, backup=item["name"], store=store, pg=pg)["trusted"] is True


# --------------------------------------------------------------------------- health

def _health(settings, store, pg):
    return health.check_health(settings, health.HealthPolicy(min_size_bytes=1), store=store, now=NOW, pg=pg)


def test_health_with_the_store_out_of_reach_is_a_critical_finding(settings, store, pg):
    backup.run_backup(settings, store=store, pg=pg, now=_days_ago(0.5))
    store.inject("list_objects", before=StorageError("cannot reach the S3 endpoint of AWS (ListObjectsV2 s3://backups/)"),
                 times=None)
    report = _health(settings, store, pg)
    assert (report["status"], report["exit_code"]) == ("critical", 2)
    assert [(item["rule"], item["severity"]) for item in report["findings"]] == [("s3_access", "critical")]
    assert "cannot reach the S3 endpoint" in report["findings"][0]["message"]


@pytest.mark.parametrize("action", ["get_bytes_and_etag", "get_range", "list_multipart_uploads"])
def test_health_with_the_store_failing_midway_is_a_finding_not_a_crash(settings, store, pg, action):
    backup.run_backup(settings, store=store, pg=pg, now=_days_ago(0.5))
    del store.requests[:]
    store.inject(action, before=StorageError("S3 request failed: HTTP 503 SlowDown"), times=None)
    report = _health(settings, store, pg)
    assert report["status"] == "critical" and ("s3_access", "critical") in [
        (item["rule"], item["severity"]) for item in report["findings"]]
    assert [key for verb, key in store.requests if verb in ("put_bytes", "delete", "open_multipart")] == []


def test_health_is_ok_and_notes_postgres_it_could_not_ask(settings, store, pg):
    backup.run_backup(settings, store=store, pg=pg, now=_days_ago(0.5))
    pg.fail("side_databases", PostgresError("PostgreSQL connection failed at localhost:5432 (connection refused)"))
    report = _health(settings, store, pg)
    assert report["status"] == "ok" and report["findings"] == [
        {"rule": "leftovers", "severity": "info",
         "message": "staging databases not checked: PostgreSQL connection failed at localhost:5432 (connection refused)"}]


# --------------------------------------------------------------------------- adopt

def _seed_backup(store, days):
    """A backup as the seed's scripts made it: pg_dump -Fc | gzip | openssl enc -aes-256-cbc -pbkdf2, and its .meta."""
    when = _days_ago(days)
    basename = layout.backup_basename("quankey", when)
    packer = compression.compressor("gzip")
    packed = packer.update(archive(seed=basename.encode())) + packer.finalize()
    encryptor = openssl_enc.CbcEncryptor(SEED_PASSPHRASE.encode())
    data = encryptor.update(packed) + encryptor.finalize()
    meta = {"backup_type": "postgresql_full", "database": "app", "timestamp": layout.format_timestamp(when),
            "size_bytes": len(data), "checksum_sha256": hashlib.sha256(data).hexdigest(), "encryption": "aes-256-cbc",
            "format": "pg_dump_custom", "retention_days": 30, "quantum_safe": False}
    store.put_object(layout.seed_object_key("", basename), data)
    store.put_object(layout.metadata_prefix("") + basename + layout.METADATA_SUFFIX, json.dumps(meta).encode())
    return basename


def test_adopt_resumes_where_an_interrupted_run_stopped(make_settings, store, pg):
    settings = make_settings(BACKUP_SEED_PASSPHRASE=SEED_PASSPHRASE)
    names = [_seed_backup(store, days) for days in (3, 2)]
    originals = dict((key, store.data(key)) for key in store.keys())
    copy_meta, copy_obj = [layout.metadata_key("", "db1", "app", names[1]), layout.object_key("", "db1", "app", names[1])]
    # the first run is cut off after the second copy's upload: its metadata is not written, its object not removed
    store.inject("put_bytes", key=copy_meta, before=StorageError("S3 PutObject failed: connection reset"))
    store.inject("delete", key=copy_obj, before=StorageError("S3 DeleteObject failed: connection reset"))
    first = adopt.run_adopt(settings, store=store, pg=pg)
    assert [item["status"] for item in first["backups"]] == [adopt.ADOPTED, adopt.FAILED]
    stray = store.data(copy_obj)
    assert stray is not None and store.data(copy_meta) is None  # an uncommitted copy: no backup
    mark = len(store.requests)
    second = adopt.run_adopt(settings, store=store, pg=pg)
    assert [item["status"] for item in second["backups"]] == [adopt.ALREADY, adopt.ADOPTED]
    assert (second["exit_code"], second["adopted"], second["already_adopted"]) == (0, 1, 1)
    assert store.data(copy_obj) != stray and ("delete", copy_obj) in store.requests[mark:]  # the stray was replaced
    for name in names:
        verified = restore.run_verify(settings, backup=name, store=store, pg=pg)
        assert (verified["trusted"], verified["layout"], verified["table_count"]) == (True, "host", 3)
    assert dict((key, store.data(key)) for key in originals) == originals  # the seed's backups are untouched
    assert store.uploads == {}
