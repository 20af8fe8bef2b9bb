# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A backup's failure paths, on fakes of S3 and PostgreSQL: whatever fails, nothing that looks like a backup stays."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import json

import pytest

from ansible_collections.quankey.backup.plugins.module_utils.catalog import layout
from ansible_collections.quankey.backup.plugins.module_utils.errors import (AccessDeniedError, ConflictError,
                                                                            PostgresError, RefusedError, StorageError)
from ansible_collections.quankey.backup.plugins.module_utils.workflows import backup, inventory, restore
from ansible_collections.quankey.backup.tests.unit.plugins.module_utils.workflows.fakes import archive

UTC = datetime.timezone.utc
WHEN = datetime.datetime(2025, 8, 20, 3, 0, 0, tzinfo=UTC)


def _keys(settings):
    """(object key, metadata key) of the backup taken at WHEN."""
    name = layout.backup_basename(settings.name, WHEN)
    return (layout.object_key(settings.prefix, settings.host, settings.db_name, name),
            layout.metadata_key(settings.prefix, settings.host, settings.db_name, name))


def _nothing_like_a_backup(settings, store):
    """No object, no metadata, no open upload: nothing a listing, a restore or prune would take for a backup."""
    assert store.keys() == [] and store.uploads == {}
    assert inventory.list_backups(settings, store) == ([], [])


def test_a_backup_through_the_fakes_commits_and_verifies(settings, store, pg):
    taken = backup.run_backup(settings, store=store, pg=pg, now=WHEN)
    obj_key, meta_key = _keys(settings)
    assert store.keys() == sorted([obj_key, meta_key]) and store.uploads == {}
    assert taken["size_bytes"] == len(store.data(obj_key)) and taken["table_count"] == 3
    assert json.loads(store.data(meta_key).decode())["checksum_sha256"] == taken["checksum_sha256"]
    verified = restore.run_verify(settings, store=store, pg=pg)
    assert (verified["name"], verified["table_count"], verified["dump_bytes"]) == (taken["name"], 3, len(archive()))


def test_pg_dump_failing_midway_aborts_the_upload_and_leaves_nothing(settings, store, pg):
    pg.add_database("app", archive(size=1024 * 1024))
    failure = 'pg_dump: error: Dumping the contents of table "t1" failed: PQgetResult() failed.'
    pg.fail_child("pg_dump", after_bytes=600 * 1024, stderr=failure)
    obj_key, _meta_key = _keys(settings)
    with pytest.raises(PostgresError, match='pg_dump exited with status 1: .*Dumping the contents of table "t1"') as info:
        backup.run_backup(settings, store=store, pg=pg, now=WHEN)
    assert info.value.step == "pg_dump"
    assert ("upload_part", obj_key) in store.requests  # it failed midway: data had gone out
    assert store.aborted == [obj_key]
    _nothing_like_a_backup(settings, store)


def test_a_failing_upload_is_aborted_and_no_metadata_is_written(settings, store, pg):
    obj_key, meta_key = _keys(settings)
    store.inject("upload_part", key=obj_key, before=StorageError("S3 UploadPart of s3://backups/%s failed: connection "
                                                                 "reset" % obj_key))
    with pytest.raises(StorageError, match="UploadPart .* connection reset"):
        backup.run_backup(settings, store=store, pg=pg, now=WHEN)
    assert store.aborted == [obj_key]
    assert ("put_bytes", meta_key) not in store.requests
    _nothing_like_a_backup(settings, store)


def test_a_failing_completion_is_aborted_too(settings, store, pg):
    obj_key, meta_key = _keys(settings)
    store.inject("complete_multipart", before=StorageError("S3 CompleteMultipartUpload failed: HTTP 503 SlowDown"))
    with pytest.raises(StorageError, match="SlowDown"):
        backup.run_backup(settings, store=store, pg=pg, now=WHEN)
    assert store.aborted == [obj_key] and ("put_bytes", meta_key) not in store.requests
    _nothing_like_a_backup(settings, store)


def test_a_metadata_write_lost_to_another_writer_removes_this_runs_object_and_leaves_the_winner(settings, store, pg):
    obj_key, meta_key = _keys(settings)
    winner = b'{"written by": "another backup of this name"}\n'
    store.inject("put_bytes", key=meta_key, before=lambda key: store.put_object(key, winner))
    with pytest.raises(ConflictError, match="another writer got there first") as info:
        backup.run_backup(settings, store=store, pg=pg, now=WHEN)
    assert info.value.exit_code == RefusedError.exit_code
    assert store.data(meta_key) == winner  # the winner's document stands
    assert store.keys() == [meta_key] and ("delete", obj_key) in store.requests  # ours is gone
    assert store.uploads == {}


def test_without_conditional_writes_a_lost_metadata_race_leaves_the_object_for_prune(settings, store, pg):
    store.conditional_writes = False  # the object may have been overwritten by the other writer: not ours to delete
    obj_key, meta_key = _keys(settings)
    store.inject("put_bytes", key=meta_key, before=lambda key: store.put_object(key, b"{}"))
    with pytest.raises(ConflictError):
        backup.run_backup(settings, store=store, pg=pg, now=WHEN)
    assert store.keys() == sorted([obj_key, meta_key]) and ("delete", obj_key) not in store.requests


def test_a_metadata_write_whose_answer_was_lost_but_that_was_stored_is_committed(settings, store, pg):
    obj_key, meta_key = _keys(settings)
    store.inject("put_bytes", key=meta_key, after=StorageError("S3 PutObject failed: connection reset (answer lost)"))
    taken = backup.run_backup(settings, store=store, pg=pg, now=WHEN)
    assert store.keys() == sorted([obj_key, meta_key]) and ("delete", obj_key) not in store.requests
    assert ("get_bytes_and_etag", meta_key) in store.requests  # read back before anything was undone
    assert restore.run_verify(settings, store=store, pg=pg)["checksum_sha256"] == taken["checksum_sha256"]


def test_a_metadata_write_that_failed_uncommits_the_backup(settings, store, pg):
    obj_key, meta_key = _keys(settings)
    store.inject("put_bytes", key=meta_key, before=StorageError("S3 PutObject failed: access denied"))
    with pytest.raises(StorageError, match="access denied"):
        backup.run_backup(settings, store=store, pg=pg, now=WHEN)
    assert ("delete", obj_key) in store.requests
    _nothing_like_a_backup(settings, store)


def test_a_name_already_taken_is_refused_before_anything_is_written(settings, store, pg):
    obj_key, _meta_key = _keys(settings)
    store.put_object(obj_key, b"an upload of the same second")
    with pytest.raises(RefusedError, match="already exists"):
        backup.run_backup(settings, store=store, pg=pg, now=WHEN)
    assert store.keys() == [obj_key] and [action for action, _key in store.requests if action == "open_multipart"] == []


def test_a_dump_that_is_not_a_custom_archive_is_refused(settings, store, pg):
    pg.add_database("app", b"--\n-- PostgreSQL database dump\n" + b"SELECT 1;\n" * 1000)
    with pytest.raises(PostgresError, match="does not start with the custom-format magic"):
        backup.run_backup(settings, store=store, pg=pg, now=WHEN)
    _nothing_like_a_backup(settings, store)


def test_a_host_that_cannot_delete_leaves_a_failed_backups_object_without_metadata_and_says_so(settings, store, pg,
                                                                                               caplog):
    """Issue 16 item 2: no s3:DeleteObject (docs/ROLES.md, "Who can delete what"): the uncommit's delete is denied."""
    obj_key, meta_key = _keys(settings)
    store.inject("put_bytes", key=meta_key, before=StorageError("S3 PutObject failed: connection reset"))
    store.inject("delete", key=obj_key, before=AccessDeniedError("S3 access denied for s3://b/%s (DeleteObject)" % obj_key))
    with pytest.raises(StorageError, match="connection reset"):  # the failure that counts, not the denied delete
        backup.run_backup(settings, store=store, pg=pg, now=WHEN)
    assert store.keys() == [obj_key] and store.uploads == {}  # the object stays, with no metadata and no open upload
    assert inventory.list_backups(settings, store)[0] == []  # ... so it is no backup
    assert "left without metadata after a failed backup (this host's keys may not delete)" in caplog.text
    assert "prune identity" in caplog.text
