# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""`replicate` (the replica backfilled) and the replica's retention (`prune --replica`, S3_REPLICA_PRUNE) on the
fakes: what is missing or wrong on the replica is found and copied with the backup's own copy routine, metadata last;
what cannot be repaired is said, with the exit code; the replica is pruned by its own listing only
(tests/functional/test_replica_followups.py does both against two moto_servers)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import json

import pytest

from ansible_collections.quankey.backup.plugins.module_utils.catalog import documents
from ansible_collections.quankey.backup.plugins.module_utils.errors import AccessDeniedError, ConfigError
from ansible_collections.quankey.backup.plugins.module_utils.workflows import backup, prune, replica
from ansible_collections.quankey.backup.tests.unit.plugins.module_utils.workflows.fakes import MemoryStore

UTC = datetime.timezone.utc
NOW = datetime.datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)


def _backups(settings, store, pg, days):
    """Backups taken ``days`` days before NOW (03:00 UTC each), oldest first."""
    return [backup.run_backup(settings, store=store, pg=pg, now=NOW - datetime.timedelta(days=day, hours=9))
            for day in sorted(days, reverse=True)]


def _writes(copy):
    return [request for request in copy.requests if request[0] in ("complete_multipart", "copy_from", "put_bytes",
                                                                   "delete")]


def test_replicate_copies_what_the_replica_lacks_and_then_finds_it_complete(settings, store, pg):
    made = _backups(settings, store, pg, [2, 1])
    copy = MemoryStore("replica")
    dry = replica.run_replicate(settings, dry_run=True, store=store, replica=copy)
    assert [item["status"] for item in dry["backups"]] == ["would-copy", "would-copy"]
    assert dry["exit_code"] == replica.EXIT_INCOMPLETE and not dry["complete"] and _writes(copy) == []
    assert dry["backups"][0]["metadata"] == "missing"
    assert dry["backups"][0]["problems"] == [{"key": made[1]["object_key"], "problem": "missing"}]

    done = replica.run_replicate(settings, store=store, replica=copy)
    assert (done["copied"], done["failed"], done["exit_code"], done["complete"]) == (2, 0, 0, True)
    assert copy.keys() == store.keys() and all(copy.data(key) == store.data(key) for key in store.keys())
    assert _writes(copy)[-1] == ("put_bytes", made[0]["metadata_key"])  # metadata last, each backup

    again = replica.run_replicate(settings, store=store, replica=copy)
    assert [item["status"] for item in again["backups"]] == ["present", "present"] and again["exit_code"] == 0
    assert not again["changed"]


def test_a_backup_whose_data_reached_the_replica_without_metadata_is_completed_after_its_data_is_hashed(
        settings, store, pg):
    made = _backups(settings, store, pg, [1])[0]
    copy = MemoryStore("replica")
    copy.put_object(made["object_key"], store.data(made["object_key"]))  # a copy cut before its metadata
    result = replica.run_replicate(settings, store=store, replica=copy)
    assert result["backups"][0]["status"] == "copied" and result["backups"][0]["problems"] == []
    assert ("iter_object", made["object_key"]) in copy.requests  # checked against the signed SHA-256 first
    assert copy.data(made["metadata_key"]) == store.data(made["metadata_key"])


def test_a_corrupt_copy_is_found_by_verify_only_and_copied_again_metadata_first_out(settings, store, pg):
    made = _backups(settings, store, pg, [1])[0]
    copy = MemoryStore("replica")
    replica.run_replicate(settings, store=store, replica=copy)
    data = bytearray(copy.data(made["object_key"]))
    data[100] ^= 1  # same size: only the SHA-256 tells
    copy.put_object(made["object_key"], bytes(data))
    assert replica.run_replicate(settings, store=store, replica=copy)["backups"][0]["status"] == "present"
    before = len(copy.requests)
    result = replica.run_replicate(settings, verify=True, store=store, replica=copy)
    item = result["backups"][0]
    assert item["status"] == "copied" and result["exit_code"] == 0
    assert item["problems"][0]["key"] == made["object_key"] and "the signed metadata says %s" % made["checksum_sha256"] \
        in item["problems"][0]["problem"]
    assert _writes(copy)[-4:] == [("delete", made["metadata_key"]), ("delete", made["object_key"]),
                                  ("complete_multipart", made["object_key"]), ("put_bytes", made["metadata_key"])]
    assert copy.data(made["object_key"]) == store.data(made["object_key"]) and len(copy.requests) > before


def test_a_corrupt_copy_these_credentials_may_not_delete_is_said_and_left(settings, store, pg):
    made = _backups(settings, store, pg, [1])[0]
    copy = MemoryStore("replica")
    replica.run_replicate(settings, store=store, replica=copy)
    copy.put_object(made["object_key"], b"short")
    copy.inject("delete", before=AccessDeniedError("S3 access denied (DeleteObject)"), times=None)
    result = replica.run_replicate(settings, store=store, replica=copy)
    item = result["backups"][0]
    assert item["status"] == "failed" and result["exit_code"] == 5 and not result["complete"]
    assert "5 bytes, the signed metadata says %d" % made["size_bytes"] in item["error"]
    assert "may not delete it" in item["error"] and made["object_key"] in item["error"]
    assert copy.data(made["metadata_key"]) == store.data(made["metadata_key"])  # nothing changed


def test_other_metadata_on_the_replica_is_reported_never_overwritten(settings, store, pg):
    made = _backups(settings, store, pg, [1])[0]
    copy = MemoryStore("replica")
    replica.run_replicate(settings, store=store, replica=copy)
    other = json.loads(copy.data(made["metadata_key"]).decode())
    other["table_count"] = 99
    copy.put_object(made["metadata_key"], documents.encode_metadata(other))
    result = replica.run_replicate(settings, store=store, replica=copy)
    item = result["backups"][0]
    assert (item["status"], item["metadata"], result["exit_code"]) == ("failed", "differs", 6)
    assert "holds other metadata" in item["error"]
    assert json.loads(copy.data(made["metadata_key"]).decode())["table_count"] == 99


def test_a_backup_that_is_not_good_on_the_primary_is_skipped_and_said(settings, store, pg):
    made = _backups(settings, store, pg, [2, 1])
    store.objects.pop(made[0]["object_key"])  # the older one lost its data object
    copy = MemoryStore("replica")
    result = replica.run_replicate(settings, store=store, replica=copy)
    statuses = dict((item["name"], item["status"]) for item in result["backups"])
    assert statuses == {made[1]["name"]: "copied", made[0]["name"]: "skipped"} and result["exit_code"] == 0
    assert "no data object" in result["backups"][1]["error"] and made[0]["metadata_key"] not in copy.keys()


def test_all_databases_of_the_host_are_replicated_with_all_databases(make_settings, store, pg):
    settings = make_settings()
    pg.add_database("other")
    _backups(settings, store, pg, [1])
    _backups(make_settings(DB_NAME="other"), store, pg, [1])
    copy = MemoryStore("replica")
    assert replica.run_replicate(settings, store=store, replica=copy)["copied"] == 1
    everything = replica.run_replicate(settings, all_databases=True, store=store, replica=copy)
    assert (everything["present"], everything["copied"], everything["database"]) == (1, 1, None)


def test_replicate_without_a_replica_or_a_key_to_verify_with_is_refused(make_settings, store):
    with pytest.raises(ConfigError, match="none is set: set S3_REPLICA_BUCKET"):
        replica.run_replicate(make_settings(), store=store)
    with pytest.raises(ConfigError, match="no key to verify it with is set"):
        replica.run_replicate(make_settings(S3_REPLICA_BUCKET="copy", BACKUP_ENCRYPTION_KEY=None), store=store,
                              replica=MemoryStore("copy"))


def test_the_replica_is_pruned_by_its_own_listing_never_by_what_the_primary_deleted(make_settings, store, pg):
    settings = make_settings(S3_REPLICA_BUCKET="replica", BACKUP_RETENTION_DAYS="3", BACKUP_MIN_KEEP="2")
    made = _backups(settings, store, pg, [10, 9, 2, 1])
    copy = MemoryStore("replica")
    replica.run_replicate(settings, store=store, replica=copy)
    for item in made:  # the primary emptied (by whoever took the host over)
        for key in (item["metadata_key"], item["object_key"]):
            store.objects.pop(key)
    alone = prune.run_prune(settings, store=store, replica=copy, now=NOW, pg=pg)
    assert alone["deleted"] == [] and alone["replica"] is None  # S3_REPLICA_PRUNE unset: the replica is not touched
    dry = prune.run_prune(settings, dry_run=True, replica=copy, replica_only=True, now=NOW)
    assert dry["bucket"] == "replica" and dry["deleted"] == [made[1]["name"], made[0]["name"]]
    assert copy.data(made[0]["metadata_key"]) is not None
    both = prune.run_prune(make_settings(S3_REPLICA_BUCKET="replica", BACKUP_RETENTION_DAYS="3", BACKUP_MIN_KEEP="2",
                                         S3_REPLICA_PRUNE="true"), store=store, replica=copy, now=NOW, pg=pg)
    assert both["replica"]["deleted"] == dry["deleted"] and both["replica"]["kept"] == [made[3]["name"], made[2]["name"]]
    assert copy.keys("metadata/") == sorted(item["metadata_key"] for item in made[2:])


def test_a_replica_copy_with_a_broken_signature_does_not_count_towards_min_keep_there(make_settings, store, pg):
    settings = make_settings(S3_REPLICA_BUCKET="replica", BACKUP_RETENTION_DAYS="3", BACKUP_MIN_KEEP="1")
    made = _backups(settings, store, pg, [10, 9])
    copy = MemoryStore("replica")
    replica.run_replicate(settings, store=store, replica=copy)
    forged = json.loads(copy.data(made[1]["metadata_key"]).decode())
    forged["table_count"] = 99  # the replica's newest copy no longer verifies: the older one is its min_keep
    copy.put_object(made[1]["metadata_key"], documents.encode_metadata(forged))
    result = prune.run_prune(settings, replica=copy, replica_only=True, now=NOW)
    assert result["kept"] == [made[0]["name"]] and result["deleted"] == [made[1]["name"]]


def test_a_failing_replica_prune_leaves_the_primarys_done_and_says_so(make_settings, store, pg):
    settings = make_settings(S3_REPLICA_BUCKET="replica", S3_REPLICA_PRUNE="true")
    _backups(settings, store, pg, [1])
    copy = MemoryStore("replica")
    copy.inject("list_objects", before=AccessDeniedError("S3 access denied (ListObjectsV2)"), times=None)
    result = prune.run_prune(settings, store=store, replica=copy, now=NOW, pg=pg)
    assert result["kept"] and result["replica"]["exit_code"] == 5 and "access denied" in result["replica"]["error"]
    with pytest.raises(ConfigError, match="none is set: set S3_REPLICA_BUCKET"):
        prune.run_prune(make_settings(), replica_only=True, now=NOW)


def test_unreadable_metadata_on_the_primary_is_skipped_not_failed(settings, store, pg):
    made = _backups(settings, store, pg, [1])[0]
    store.put_object(made["metadata_key"], b"not json")
    result = replica.run_replicate(settings, store=store, replica=MemoryStore("replica"))
    assert result["backups"][0]["status"] == "skipped" and "metadata unreadable" in result["backups"][0]["error"]
    assert result["exit_code"] == 0
