# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Prune of the physical kind (workflows/prune.py's prune_physical) on the in-memory bucket: the host's base backups
under the dumps' retention rules, then its archived WAL that no kept base backup needs; nothing without a trusted
kept base backup; locked WAL kept; a dry run deletes nothing. tests/functional/test_wal_prune.py does it for real."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import hashlib
import json

from ansible_collections.quankey.backup.plugins.module_utils import cli, keys
from ansible_collections.quankey.backup.plugins.module_utils.catalog import documents, layout
import pytest

from ansible_collections.quankey.backup.plugins.module_utils.errors import AccessDeniedError, ConfigError
from ansible_collections.quankey.backup.plugins.module_utils.workflows import backup, prune
from ansible_collections.quankey.backup.tests.unit.plugins.module_utils.workflows.fakes import MemoryStore

UTC = datetime.timezone.utc
NOW = datetime.datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)
RULES = {"BACKUP_RETENTION_DAYS": "3", "BACKUP_MIN_KEEP": "1"}


def _base(settings, store, when, start, timeline=1, sign=True, host="db1"):
    """A committed base backup of ``host`` taken at ``when`` whose WAL starts at ``start`` (its metadata signed)."""
    basename = layout.base_basename("cluster", when)
    obj_key = layout.base_object_key(settings.prefix, host, basename)
    meta_key = layout.base_metadata_key(settings.prefix, host, basename)
    data = b"QKBK" + basename.encode() * 10
    checked = {"timeline": timeline, "start_lsn": "1/10000028", "stop_lsn": "1/10000100", "start_wal_file": start,
               "checkpoint_lsn": "1/10000060", "backup_label": "START WAL LOCATION: 1/10000028\n",
               "manifest": {"sha256": "0" * 64, "size_bytes": 10, "files": 3, "data_bytes": 100}}
    view = dict(settings.describe(), host=host)
    metadata = documents.build_base_metadata(
        view, basename=basename, when=when, object_key=obj_key, size_bytes=len(data),
        checksum=hashlib.sha256(data).hexdigest(), tar_bytes=1000, envelope={}, key_id=None,
        encryption_name="aes-256-gcm", duration=1.0, server_version="15.8", pg_basebackup_version="15.8",
        system_identifier="7300000000000000001", checked=checked)
    if sign:
        metadata = keys.KeyContext(settings).sign(metadata)
    store.put_object(obj_key, data, last_modified=when)
    store.put_object(meta_key, documents.encode_metadata(metadata), last_modified=when)
    return basename


def _wal(settings, store, *names, host="db1"):
    for name in names:
        store.put_object(layout.wal_key(settings.prefix, host, name[:8], name), b"QKWL" + name.encode())


def _wal_left(settings, store, host="db1"):
    return sorted(key.rsplit("/", 1)[-1] for key in store.keys(layout.wal_prefix(settings.prefix, host)))


OLD_START, NEW_START = "000000010000000000000010", "000000010000000000000020"
WAL = ["00000001000000000000000F", "000000010000000000000010", "000000010000000000000010.00000028.backup",
       "000000010000000000000015", "00000001000000000000001F", "000000010000000000000020",
       "000000010000000000000020.00000028.backup", "000000010000000000000021", "00000002.history",
       "000000020000000000000005"]
GONE = ["00000001000000000000000F", "000000010000000000000010", "000000010000000000000010.00000028.backup",
        "000000010000000000000015", "00000001000000000000001F"]


def test_the_old_base_backup_goes_and_the_wal_only_it_needed_with_it(make_settings, store, pg):
    settings = make_settings(**RULES)
    old = _base(settings, store, datetime.datetime(2026, 11, 20, 3, 0, tzinfo=UTC), OLD_START)
    new = _base(settings, store, datetime.datetime(2026, 11, 29, 3, 0, tzinfo=UTC), NEW_START)
    _wal(settings, store, *WAL)
    _wal(settings, store, "00000001000000000000000E", host="db2")  # another host's: never looked at

    dry = prune.run_prune(settings, dry_run=True, store=store, pg=pg, now=NOW)
    assert (dry["base_kept"], dry["base_deleted"]) == ([new], [old])
    assert (dry["wal_deleted"], dry["wal_kept"], dry["wal_kept_from"], dry["wal_note"]) == (5, 5, NEW_START, None)
    fates = dict((item["name"], item) for item in dry["base_backups"])
    assert fates[new]["rules"] == ["age <= 3 days", "min_keep 1 of 1"] and fates[new]["kind"] == "base"
    assert fates[old]["reason"] == "older than 3 days and kept by no other rule"
    assert fates[new]["start_wal_file"] == NEW_START and fates[new]["database"] is None
    assert _wal_left(settings, store) == sorted(WAL), "a dry run deletes nothing"
    assert store.keys("base/db1/") == sorted(["base/db1/%s.meta" % old, "base/db1/%s.tar.enc" % old,
                                              "base/db1/%s.meta" % new, "base/db1/%s.tar.enc" % new])

    done = prune.run_prune(settings, store=store, pg=pg, now=NOW)
    assert (done["base_deleted"], done["wal_deleted"], done["wal_kept_from"]) == ([old], 5, NEW_START)
    assert store.keys("base/db1/") == ["base/db1/%s.meta" % new, "base/db1/%s.tar.enc" % new]
    assert _wal_left(settings, store) == sorted(set(WAL) - set(GONE))
    assert _wal_left(settings, store, host="db2") == ["00000001000000000000000E"]
    again = prune.run_prune(settings, store=store, pg=pg, now=NOW)
    assert (again["base_deleted"], again["wal_deleted"], again["wal_kept"]) == ([], 0, 5)


def test_no_wal_is_deleted_without_a_trusted_kept_base_backup(make_settings, store, pg):
    settings = make_settings(**RULES)
    _base(settings, store, datetime.datetime(2026, 11, 29, 3, 0, tzinfo=UTC), NEW_START, sign=False)  # kept by age
    _wal(settings, store, *WAL)
    done = prune.run_prune(settings, store=store, pg=pg, now=NOW)
    assert (done["wal_deleted"], done["wal_kept"], done["wal_kept_from"]) == (0, len(WAL), None)
    assert "no trusted base backup of host db1 is kept" in done["wal_note"]
    assert "keeps all %d archived WAL file(s)" % len(WAL) in done["wal_note"]
    assert done["base_backups"][0]["good"] is False and done["base_kept"] == [done["base_backups"][0]["name"]]
    assert _wal_left(settings, store) == sorted(WAL)


def test_no_base_backup_at_all_keeps_all_wal(make_settings, store, pg):
    settings = make_settings(**RULES)
    _wal(settings, store, *WAL)
    done = prune.run_prune(settings, store=store, pg=pg, now=NOW)
    assert (done["base_backups"], done["wal_deleted"], done["wal_kept"]) == ([], 0, len(WAL))
    assert "keeps all" in done["wal_note"] and _wal_left(settings, store) == sorted(WAL)


def test_an_untrusted_kept_base_backup_still_holds_its_wal(make_settings, store, pg):
    # the trusted base starts at 0/20, a newer unsigned one (kept by age) claims 0/12: WAL from 0/12 on stays
    settings = make_settings(**RULES)
    _base(settings, store, datetime.datetime(2026, 11, 28, 3, 0, tzinfo=UTC), NEW_START)
    _base(settings, store, datetime.datetime(2026, 11, 29, 3, 0, tzinfo=UTC), "000000010000000000000012", sign=False)
    _wal(settings, store, *WAL)
    done = prune.run_prune(settings, store=store, pg=pg, now=NOW)
    assert done["wal_kept_from"] == "000000010000000000000012"
    gone = {"00000001000000000000000F", "000000010000000000000010", "000000010000000000000010.00000028.backup"}
    assert _wal_left(settings, store) == sorted(set(WAL) - gone)


def test_locked_wal_and_locked_base_backups_are_kept_until_their_lock_ends(make_settings, pg):
    store = MemoryStore("backups", now=NOW, versioned=True, lock_enabled=True)
    settings = make_settings(**RULES)
    old = _base(settings, store, datetime.datetime(2026, 11, 20, 3, 0, tzinfo=UTC), OLD_START)
    _base(settings, store, datetime.datetime(2026, 11, 29, 3, 0, tzinfo=UTC), NEW_START)
    _wal(settings, store, *WAL)
    until = NOW + datetime.timedelta(days=2)
    store.locks[layout.base_metadata_key("", "db1", old)] = ("compliance", until)
    store.locks[layout.wal_key("", "db1", "00000001", "000000010000000000000015")] = (
        "governance", NOW + datetime.timedelta(days=10))
    store.locks[layout.wal_key("", "db1", "00000001", "00000001000000000000000F")] = (
        "compliance", NOW - datetime.timedelta(days=1))  # its lock is over
    done = prune.run_prune(settings, store=store, pg=pg, now=NOW)
    assert done["base_deleted"] == [] and old in done["base_kept"]
    old_fate = [item for item in done["base_backups"] if item["name"] == old][0]
    assert old_fate["rules"] == ["locked until 2026-12-02T12:00:00Z"]
    # the old base is kept (locked), so it still bounds the WAL: only what is before its start goes
    assert (done["wal_deleted"], done["wal_locked"], done["wal_kept_from"]) == (1, 0, OLD_START)
    assert "00000001000000000000000F" not in _wal_left(settings, store)
    later = prune.run_prune(settings, store=store, pg=pg, now=NOW + datetime.timedelta(days=3))
    assert later["base_deleted"] == [old]
    assert (later["wal_deleted"], later["wal_locked"]) == (3, 1)  # 0/10, its .backup, 0/1F; 0/15 still locked
    assert "000000010000000000000015" in _wal_left(settings, store)


def test_credentials_that_cannot_list_base_or_wal_leave_them_alone(make_settings, store, pg):
    settings = make_settings(**RULES)
    _wal(settings, store, *WAL)
    store.inject("list_objects", "base/db1/", before=AccessDeniedError("AccessDenied: ListObjectsV2 on base/db1/"),
                 times=5)
    done = prune.run_prune(settings, store=store, pg=pg, now=NOW)
    assert done["base_backups"] == [] and done["wal_deleted"] == 0 and "not listed here" in done["wal_note"]
    assert _wal_left(settings, store) == sorted(WAL)


def test_the_cli_says_what_prune_did_to_base_backups_and_wal(make_settings, store, pg, monkeypatch, capsys):
    settings = make_settings(**RULES)
    old = _base(settings, store, datetime.datetime(2026, 11, 20, 3, 0, tzinfo=UTC), OLD_START)
    _base(settings, store, datetime.datetime(2026, 11, 29, 3, 0, tzinfo=UTC), NEW_START)
    _wal(settings, store, *WAL)
    real = prune.run_prune
    monkeypatch.setattr(prune, "run_prune", lambda settings_, **kwargs: real(settings_, store=store, pg=pg, now=NOW,
                                                                             **kwargs))

    class Args:
        dry_run, replica, json = True, False, False
    lines = cli._prune_lines(Args, settings, prune.run_prune(settings, dry_run=True))
    assert "would delete 1 base backup(s), would keep 1" in lines
    assert any(line.split() == ["delete", old, "older", "than", "3", "days", "and", "kept", "by", "no", "other", "rule"]
               for line in lines)
    assert ("would delete 5 archived WAL file(s) before %s (the oldest kept base backup's start), kept 5" % NEW_START
            in lines)
    assert json.loads(json.dumps(prune.run_prune(settings, dry_run=True)))["wal_deleted"] == 5


def test_what_interrupted_base_backups_left_is_swept_once_stale(make_settings, store, pg):
    settings = make_settings(**RULES)
    _base(settings, store, datetime.datetime(2026, 11, 29, 3, 0, tzinfo=UTC), NEW_START)
    stale_orphan = layout.base_object_key("", "db1", "cluster_base_20261128_030000")
    young_orphan = layout.base_object_key("", "db1", "cluster_base_20261130_113000")
    store.put_object(stale_orphan, b"QKBK half", last_modified=NOW - datetime.timedelta(hours=30))
    store.put_object(young_orphan, b"QKBK running", last_modified=NOW - datetime.timedelta(minutes=20))
    store.now = NOW - datetime.timedelta(days=2)  # the uploads' start (the test bed's store misreports it so)
    killed = store.open_multipart(layout.base_object_key("", "db1", "cluster_base_20261127_030000"))
    running = store.open_multipart(layout.base_object_key("", "db1", "cluster_base_20261130_115500"))
    store.now = NOW
    assert killed.upload_id != running.upload_id

    dry = prune.run_prune(settings, dry_run=True, store=store, pg=pg, now=NOW)
    assert dry["orphans_deleted"] == [stale_orphan] and dry["uploads_aborted"] == [killed.key]
    assert store.data(stale_orphan) and len(store.uploads) == 2, "a dry run removes nothing"
    done = prune.run_prune(settings, store=store, pg=pg, now=NOW)
    assert done["orphans_deleted"] == [stale_orphan] and done["uploads_aborted"] == [killed.key]
    assert stale_orphan not in store.keys() and young_orphan in store.keys()
    assert list(store.uploads) == [running.upload_id] and store.aborted == [killed.key]
    assert done["base_kept"] and done["base_deleted"] == []  # the committed base backup is no leftover


def _kinds_bucket(settings, store, pg):
    """Two dumps (an old one retention deletes), two base backups (the old one goes) and the WAL of both."""
    dumps = [backup.run_backup(settings, store=store, pg=pg, now=datetime.datetime(2026, 11, day, 3, 0, tzinfo=UTC))
             for day in (20, 29)]
    old = _base(settings, store, datetime.datetime(2026, 11, 20, 3, 0, tzinfo=UTC), OLD_START)
    new = _base(settings, store, datetime.datetime(2026, 11, 29, 3, 0, tzinfo=UTC), NEW_START)
    _wal(settings, store, *WAL)
    return dumps, old, new


def test_prune_kind_physical_prunes_base_backups_and_wal_and_never_a_dump(make_settings, store, pg):
    settings = make_settings(**RULES)
    dumps, old, new = _kinds_bucket(settings, store, pg)
    done = prune.run_prune(settings, store=store, pg=pg, now=NOW, kind="physical")
    assert (done["kind"], done["deleted"], done["kept"], done["backups"]) == ("physical", [old], [new], [])
    assert (done["base_deleted"], done["wal_deleted"], done["wal_kept_from"]) == ([old], 5, NEW_START)
    assert _wal_left(settings, store) == sorted(set(WAL) - set(GONE))
    assert all(store.data(dump["metadata_key"]) for dump in dumps), "no dump is pruned"

    class Args:
        dry_run, replica, json = False, False, False
    lines = cli._prune_lines(Args, settings, done)
    assert lines[0] == "deleted 1 base backup(s), kept 1"
    assert not any(" backup(s), kept 0 (kept by" in line for line in lines)  # no dump line: none was judged


def test_prune_kind_physical_needs_no_database(make_settings, store, pg):
    settings = make_settings(DB_NAME=None, **RULES)
    _base(settings, store, datetime.datetime(2026, 11, 29, 3, 0, tzinfo=UTC), NEW_START)
    done = prune.run_prune(settings, store=store, pg=pg, now=NOW, kind="physical")
    assert done["base_kept"] and done["wal_note"] is None
    with pytest.raises(ConfigError, match="DB_NAME"):
        prune.run_prune(settings, store=store, pg=pg, now=NOW)


def test_prune_kind_logical_leaves_base_backups_and_wal_alone(make_settings, store, pg):
    settings = make_settings(**RULES)
    dumps, old, new = _kinds_bucket(settings, store, pg)
    done = prune.run_prune(settings, store=store, pg=pg, now=NOW, kind="logical")
    assert done["kind"] == "logical" and done["deleted"] == [dumps[0]["name"]] and "base_deleted" not in done
    assert store.keys("base/db1/") == sorted(["base/db1/%s.meta" % old, "base/db1/%s.tar.enc" % old,
                                              "base/db1/%s.meta" % new, "base/db1/%s.tar.enc" % new])
    assert _wal_left(settings, store) == sorted(WAL)
    both = prune.run_prune(settings, store=store, pg=pg, now=NOW)  # the default: everything
    assert (both["kind"], both["deleted"], both["base_deleted"], both["wal_deleted"]) == ("both", [], [old], 5)


def test_prune_refuses_an_unknown_kind_and_a_physical_replica_prune(make_settings, store, pg):
    settings = make_settings(**RULES)
    with pytest.raises(ConfigError, match="--kind 'dumps' is not a kind: choose one of logical, physical, both"):
        prune.run_prune(settings, store=store, pg=pg, now=NOW, kind="dumps")
    with pytest.raises(ConfigError, match="the replica holds dumps only"):
        prune.run_prune(settings, store=store, pg=pg, now=NOW, kind="physical", replica_only=True)
