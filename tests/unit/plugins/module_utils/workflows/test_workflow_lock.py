# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Object Lock and versioned buckets on the fakes: backups written locked (or refused before anything is written),
prune keeping locked backups and saying until when, list --include-deleted, restore's refusal naming undelete, and
undelete itself (tests/functional/test_object_lock.py does the same against moto_server)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime

import pytest

from ansible_collections.quankey.backup.plugins.module_utils.catalog import layout
from ansible_collections.quankey.backup.plugins.module_utils.errors import ConfigError, RefusedError
from ansible_collections.quankey.backup.plugins.module_utils.workflows import backup, inventory, prune, undelete
from ansible_collections.quankey.backup.tests.unit.plugins.module_utils.workflows.fakes import ENV, MemoryStore

UTC = datetime.timezone.utc
NOW = datetime.datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)


def _at(text):
    return datetime.datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=UTC)


def test_a_locked_backup_writes_every_object_locked_and_a_bucket_without_lock_fails_before_any_write(make_settings,
                                                                                                     pg):
    settings = make_settings(BACKUP_OBJECT_LOCK_MODE="compliance", BACKUP_OBJECT_LOCK_DAYS="10")
    plain = MemoryStore(ENV["S3_BUCKET"])
    with pytest.raises(ConfigError, match="has no Object Lock, and BACKUP_OBJECT_LOCK_MODE asks"):
        backup.run_backup(settings, store=plain, pg=pg)
    assert plain.keys() == [] and not plain.uploads and ("open_multipart", plain.requests[-1][1]) not in plain.requests
    store = MemoryStore(ENV["S3_BUCKET"], lock_enabled=True)
    result = backup.run_backup(settings, store=store, pg=pg)
    assert result["object_lock"]["mode"] == "compliance" and result["object_lock"]["days"] == 10
    assert sorted(store.locks) == store.keys() and len(store.keys()) == 2  # data and metadata (no globals here)
    assert all(lock == ("compliance", store.now + datetime.timedelta(days=10)) for lock in store.locks.values())
    with pytest.raises(ConfigError, match="BACKUP_OBJECT_LOCK_DAYS is not set"):
        backup.plan_backup(make_settings(BACKUP_OBJECT_LOCK_MODE="governance"), store=store, pg=pg)


def test_prune_keeps_a_locked_backup_it_would_delete_says_until_when_and_reads_locks_only_of_those(make_settings, pg):
    store = MemoryStore(ENV["S3_BUCKET"], lock_enabled=True)
    settings = make_settings(BACKUP_RETENTION_DAYS="3", BACKUP_MIN_KEEP="1")
    old = backup.run_backup(settings, store=store, pg=pg, now=_at("2026-10-01 03:00"))
    older = backup.run_backup(settings, store=store, pg=pg, now=_at("2026-09-01 03:00"))
    newest = backup.run_backup(settings, store=store, pg=pg, now=_at("2026-11-30 03:00"))
    store.locks[old["object_key"]] = ("governance", _at("2026-12-20 00:00"))
    store.locks[old["metadata_key"]] = ("governance", _at("2026-12-20 00:05"))
    store.locks[older["object_key"]] = ("governance", _at("2026-11-01 00:00"))  # ended
    del store.requests[:]
    dry = prune.run_prune(settings, dry_run=True, store=store, pg=pg, now=NOW)
    fates = dict((item["name"], item) for item in dry["backups"])
    assert fates[old["name"]]["fate"] == "keep" and fates[old["name"]]["rules"] == ["locked until 2026-12-20T00:05:00Z"]
    assert fates[old["name"]]["locked_until"] == "2026-12-20T00:05:00Z"
    assert fates[older["name"]]["fate"] == "delete" and fates[older["name"]]["locked_until"] == "2026-11-01T00:00:00Z"
    assert [key for action, key in store.requests if action == "lock_of"] == [
        old["metadata_key"], old["object_key"], older["metadata_key"], older["object_key"]]  # not the newest's
    done = prune.run_prune(settings, store=store, pg=pg, now=NOW)
    assert done["deleted"] == [older["name"]] and store.data(old["object_key"]) is not None
    assert store.data(newest["metadata_key"]) is not None


def test_a_deleted_backup_is_listed_refused_by_restore_naming_undelete_and_undelete_brings_it_back(make_settings, pg):
    settings = make_settings()
    store = MemoryStore(ENV["S3_BUCKET"], versioned=True)
    first = backup.run_backup(settings, store=store, pg=pg, now=_at("2026-11-29 03:00"))
    second = backup.run_backup(settings, store=store, pg=pg, now=_at("2026-11-30 03:00"))
    store.delete(second["metadata_key"])
    store.delete(first["object_key"])  # the data only: its metadata is still there

    plain = inventory.find_backups(settings, host="db1", db="app", store=store)
    assert [item["name"] for item in plain["backups"]] == [first["name"]]
    listed = inventory.find_backups(settings, host="db1", db="app", store=store, include_deleted=True, details=True)
    shown = dict((item["name"], item) for item in listed["backups"])
    assert sorted(shown) == sorted([first["name"], second["name"]])
    assert shown[second["name"]]["deleted"] == {"at": store.now.strftime("%Y-%m-%dT%H:%M:%SZ"),
                                                "objects": [second["metadata_key"]]}
    assert shown[first["name"]]["deleted"]["objects"] == [first["object_key"]]
    assert "signature" not in shown[second["name"]] and shown[first["name"]]["trusted"] is True

    for name in (second["name"], first["name"]):
        with pytest.raises(RefusedError, match=r"was deleted .*`quankey-backup undelete %s`" % name):
            inventory.select(settings, store, backup=name)

    dry = undelete.run_undelete(settings, second["name"], store=store, dry_run=True)
    assert dry["objects_restored"] == [second["metadata_key"]] and store.data(second["metadata_key"]) is None
    done = undelete.run_undelete(settings, second["name"], store=store)
    assert done["markers_removed"] == 1 and done["signature"].startswith("valid")
    assert inventory.select(settings, store, backup=second["name"]).basename == second["name"]
    again = undelete.run_undelete(settings, second["name"], store=store)
    assert again["objects_restored"] == [] and again["signature"].startswith("valid")


def test_undelete_refuses_when_a_version_is_missing_and_changes_nothing(make_settings, pg):
    settings = make_settings()
    store = MemoryStore(ENV["S3_BUCKET"], versioned=True)
    made = backup.run_backup(settings, store=store, pg=pg)
    store.delete(made["metadata_key"])
    record = layout.BackupRecord("db1", "app", made["name"], made["metadata_key"], made["object_key"])
    versions = {made["metadata_key"]: [{"deleted": True, "version_id": "m1"}, {"deleted": False, "version_id": "v1"}],
                made["object_key"]: [{"deleted": True, "version_id": "m2"}]}
    with pytest.raises(RefusedError, match=r"cannot undelete .*%s has no version left .*nothing was changed"
                       % made["object_key"]):
        undelete.plan_undelete(record, versions)
    with pytest.raises(RefusedError, match="no backup .* deleted or not"):
        undelete.run_undelete(settings, "app_backup_20200101_000000", store=store)
    with pytest.raises(ConfigError, match="is not a backup's name"):
        undelete.run_undelete(settings, "nonsense", store=store)
