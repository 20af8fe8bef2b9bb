# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The replica (S3_REPLICA_*) on the fakes: a committed backup copied streamed or server-side and checked against its
signed metadata, metadata last; a copy that does not match is aborted; a failing replica does not fail the backup;
the health rule; restore's selection falling back to the replica (tests/functional/test_replica.py does it against two
moto_servers)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime

import pytest

from ansible_collections.quankey.backup.plugins.module_utils.catalog import documents, layout
from ansible_collections.quankey.backup.plugins.module_utils.errors import ConfigError, IntegrityError, NotFoundError
from ansible_collections.quankey.backup.plugins.module_utils.errors import StorageError
from ansible_collections.quankey.backup.plugins.module_utils.workflows import backup, health, inventory, replica
from ansible_collections.quankey.backup.plugins.module_utils.workflows import restore, wiring
from ansible_collections.quankey.backup.tests.unit.plugins.module_utils.workflows.fakes import ENV, MemoryStore

UTC = datetime.timezone.utc


def _committed(settings, store, pg):
    made = backup.run_backup(settings, store=store, pg=pg)
    document = store.data(made["metadata_key"])
    return made, document, documents.decode_metadata(document, made["metadata_key"])


@pytest.mark.parametrize("server_side", [False, True], ids=["streamed", "server-side"])
def test_a_committed_backup_is_copied_checked_and_its_metadata_written_last(settings, store, pg, server_side):
    made, document, metadata = _committed(settings, store, pg)
    copy = MemoryStore("replica")
    result = replica.replicate(store, copy, made["metadata_key"], document, metadata, server_side=server_side)
    assert result["status"] == "ok" and result["method"] == ("server-side" if server_side else "streamed")
    assert copy.keys() == store.keys()
    assert all(copy.data(key) == store.data(key) for key in store.keys())
    writes = [request for request in copy.requests if request[0] in ("complete_multipart", "copy_from", "put_bytes")]
    assert writes[-1] == ("put_bytes", made["metadata_key"])
    assert (("iter_object", made["object_key"]) in copy.requests) == server_side  # a server-side copy is read back
    assert (("copy_from", made["object_key"]) in copy.requests) == server_side


def test_a_copy_that_is_not_the_signed_backup_is_aborted_and_no_metadata_is_written(settings, store, pg):
    made, document, metadata = _committed(settings, store, pg)
    data = bytearray(store.data(made["object_key"]))
    data[-1] ^= 1  # same size, other bytes: only the SHA-256 tells
    store.put_object(made["object_key"], bytes(data))
    copy = MemoryStore("replica")
    with pytest.raises(IntegrityError, match="the metadata says %d bytes with %s" % (len(data), made["checksum_sha256"])):
        replica.replicate(store, copy, made["metadata_key"], document, metadata)
    assert copy.keys() == [] and copy.aborted == [made["object_key"]]


def test_a_replica_already_holding_the_backup_is_checked_not_copied_and_other_metadata_is_refused(settings, store, pg):
    made, document, metadata = _committed(settings, store, pg)
    copy = MemoryStore("replica")
    replica.replicate(store, copy, made["metadata_key"], document, metadata)
    before = len([request for request in copy.requests if request[0] == "open_multipart"])
    assert replica.replicate(store, copy, made["metadata_key"], document, metadata)["status"] == "ok"
    assert len([request for request in copy.requests if request[0] == "open_multipart"]) == before
    copy.put_object(made["metadata_key"], b"{}")
    with pytest.raises(IntegrityError, match="already holds other metadata"):
        replica.replicate(store, copy, made["metadata_key"], document, metadata)


def test_a_failing_replica_is_a_result_and_a_warning_not_a_failure(make_settings, settings, store, pg, caplog):
    made, document, metadata = _committed(settings, store, pg)
    elsewhere = make_settings(S3_REPLICA_BUCKET="replica", S3_REPLICA_ENDPOINT_URL="http://replica.example:9000")
    copy = MemoryStore("replica")
    copy.inject("upload_part", before=StorageError("UploadPart failed (cannot connect)"))
    result = replica.replicate_committed(elsewhere, store, made["metadata_key"], document, metadata, replica=copy)
    assert result["status"] == "failed" and result["bucket"] == "replica" and "cannot connect" in result["error"]
    assert copy.keys() == [] and "its copy to the replica s3://replica failed" in caplog.text
    assert replica.replicate_committed(settings, store, made["metadata_key"], document, metadata) is None  # no replica


def test_a_backup_without_a_replica_has_no_replica_stage(settings, store, pg):
    made = backup.run_backup(settings, store=store, pg=pg)
    assert made["replica"] is None and "replica" not in made["stage_seconds"]


def test_big_objects_are_streamed_even_on_the_same_account():
    assert replica.method_for(True, 5 * 1024 ** 3) == "server-side"
    assert replica.method_for(True, 5 * 1024 ** 3 + 1) == "streamed"
    assert replica.method_for(False, 10) == "streamed"


def test_the_replica_settings_default_to_the_primarys(make_settings):
    settings = make_settings(S3_REPLICA_BUCKET="copy", S3_ENDPOINT_URL="http://primary:9000", AWS_ACCESS_KEY_ID="a",
                             AWS_SECRET_ACCESS_KEY="s")
    assert wiring.replica_of(settings, "endpoint_url") == "http://primary:9000"
    assert wiring.replica_of(settings, "access_key") == "a" and wiring.same_account(settings)
    other = make_settings(S3_REPLICA_BUCKET="copy", AWS_ACCESS_KEY_ID="a", AWS_SECRET_ACCESS_KEY="s",
                          AWS_SESSION_TOKEN="t", S3_REPLICA_ACCESS_KEY_ID="b", S3_REPLICA_SECRET_ACCESS_KEY="c")
    assert wiring.replica_of(other, "secret_key") == "c" and wiring.replica_of(other, "session_token") is None
    assert not wiring.same_account(other)
    assert not wiring.same_account(make_settings(S3_REPLICA_BUCKET="copy", S3_REPLICA_ENDPOINT_URL="http://other"))
    assert "replica_secret_key" not in other.describe() and "'c'" not in repr(other)
    assert wiring.open_replica(make_settings()) is None


def test_one_replica_key_without_the_other_is_refused(make_settings):
    with pytest.raises(ConfigError, match="S3_REPLICA_ACCESS_KEY_ID is set but S3_REPLICA_SECRET_ACCESS_KEY is not"):
        make_settings(S3_REPLICA_BUCKET="copy", S3_REPLICA_ACCESS_KEY_ID="b")


def _record(when, has_object=True):
    basename = layout.backup_basename("app", when)
    return layout.BackupRecord("db1", "app", basename, "m/" + basename, "o/" + basename,
                               object_size=10 if has_object else None)


def test_the_replica_rule_warns_of_the_newest_backup_missing_or_a_replica_behind():
    policy = health.HealthPolicy(interval_hours=24)
    newest = _record(datetime.datetime(2026, 11, 30, 3, 0, tzinfo=UTC))
    day_before = _record(datetime.datetime(2026, 11, 29, 3, 0, tzinfo=UTC))
    week_before = _record(datetime.datetime(2026, 11, 23, 3, 0, tzinfo=UTC))
    assert health.replica_findings(newest, [newest, day_before], policy, "copy") == []
    assert health.replica_findings(None, [], policy, "copy") == []
    missing = health.replica_findings(newest, [day_before], policy, "copy")
    assert [finding["severity"] for finding in missing] == ["warning"] and "behind" not in missing[0]["message"]
    assert "newest good backup %s is not on the replica s3://copy" % newest.basename in missing[0]["message"]
    behind = health.replica_findings(newest, [week_before], policy, "copy")[0]["message"]
    assert "%s is 168.0 h older than the primary's" % week_before.basename in behind
    empty = health.replica_findings(newest, [_record(newest.timestamp, has_object=False)], policy, "copy")
    assert "holds no backup" in empty[0]["message"]


def test_restore_reads_the_replica_when_the_primary_fails_and_says_so(make_settings, store, pg, monkeypatch, caplog):
    settings = make_settings(S3_REPLICA_BUCKET="replica")
    made, document, metadata = _committed(make_settings(), store, pg)
    copy = MemoryStore("replica")
    replica.replicate(store, copy, made["metadata_key"], document, metadata)
    monkeypatch.setattr(wiring, "open_replica", lambda settings_, retry_window=None: copy)
    store.inject("list_objects", before=StorageError("ListObjectsV2 failed (cannot connect)"), times=None)
    chosen, record, fallback = inventory.select_with_replica(settings, store)
    assert chosen is copy and record.basename == made["name"] and record.verdict.trusted
    assert fallback == {"bucket": "replica", "reason": "ListObjectsV2 failed (cannot connect)"}
    assert "THE PRIMARY BUCKET s3://backups FAILED" in caplog.text
    verified = restore.run_verify(settings, store=store, pg=pg)
    assert verified["bucket"] == "replica" and verified["replica_fallback"]["bucket"] == "replica"
    with pytest.raises(StorageError):  # without a replica the primary's failure stands
        inventory.select_with_replica(make_settings(), store)
    empty = MemoryStore("replica")
    monkeypatch.setattr(wiring, "open_replica", lambda settings_, retry_window=None: empty)
    with pytest.raises(NotFoundError, match="the primary failed first: ListObjectsV2 failed"):
        inventory.select_with_replica(settings, store)
    assert ENV["S3_BUCKET"] == store.bucket
