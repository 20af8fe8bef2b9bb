# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Restore's and verify's failure paths, on fakes of S3 and PostgreSQL: the target is never touched, no staging
database or restore login is left, and what is refused is refused before a byte is downloaded."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import json

import pytest

from ansible_collections.quankey.backup.plugins.module_utils.catalog import documents
from ansible_collections.quankey.backup.plugins.module_utils.errors import (EXIT_INTEGRITY, ChecksumMismatchError,
                                                                            IntegrityError, RefusedError, TamperedError)
from ansible_collections.quankey.backup.plugins.module_utils.workflows import backup, restore
from ansible_collections.quankey.backup.tests.unit.plugins.module_utils.workflows.fakes import archive

UTC = datetime.timezone.utc
WHEN = datetime.datetime(2025, 8, 20, 3, 0, 0, tzinfo=UTC)
TARGET = "app"  # the database the backup was taken of: a restore with force replaces it
TARGET_CONTENT = archive(tables=5, seed=b"the live database")


@pytest.fixture
def taken(settings, store, pg):
    """A backup of ``app`` (3.5 MiB: four segments of 1 MiB), then ``app`` holding newer data (5 tables)."""
    pg.add_database("app", archive(tables=3, size=3584 * 1024))
    result = backup.run_backup(settings, store=store, pg=pg, now=WHEN)
    pg.add_database(TARGET, TARGET_CONTENT)
    del pg.server.log[:]
    return result


def _downloads(store, taken):
    return [action for action, key in store.requests if key == taken["object_key"] and action == "iter_object"]


def _untouched(pg):
    """Only the target is on the server, as it was; no staging database, no restore login is left."""
    assert sorted(pg.server.databases) == [TARGET]
    assert pg.content(TARGET) == TARGET_CONTENT
    assert [name for name, info in pg.server.roles.items() if info["login"]] == []


def _flip(store, key, offset):
    data = bytearray(store.data(key))
    data[offset] ^= 0x01
    store.put_object(key, bytes(data))


def test_a_restore_through_the_fakes_replaces_the_target_and_keeps_the_old_one(settings, store, pg, taken):
    result = restore.run_restore(settings, target_db=TARGET, force=True, store=store, pg=pg)
    assert result["table_count"] == 3 and result["replaced_db"].startswith("app__replaced_")
    assert pg.content(TARGET) == archive(tables=3, size=3584 * 1024)
    assert pg.content(result["replaced_db"]) == TARGET_CONTENT
    assert [name for name, info in pg.server.roles.items() if info["login"]] == []  # its login was dropped


def test_a_target_that_exists_is_refused_without_force_before_anything_is_written(settings, store, pg, taken):
    with pytest.raises(RefusedError, match="database 'app' already exists on .*--force"):
        restore.run_restore(settings, target_db=TARGET, store=store, pg=pg)
    assert pg.server.log == [] and pg.server.roles == {}
    assert _downloads(store, taken) == []
    _untouched(pg)


def test_decryption_failing_midway_drops_the_staging_database_and_leaves_the_target(settings, store, pg, taken,
                                                                                    monkeypatch):
    _flip(store, taken["object_key"], 2 * 1024 * 1024 + 100)  # in the third segment: two went to pg_restore first
    fed = []
    real_stream = restore.RestoreStream._stream

    def counting(stream, opened, digest, opener, sink, toc, guard):
        class Counting:
            def feed(self, data):
                fed.append(len(data))
                return sink.feed(data)
        return real_stream(stream, opened, digest, opener, Counting(), toc, guard)

    monkeypatch.setattr(restore.RestoreStream, "_stream", counting)
    with pytest.raises(TamperedError, match="(?s)decrypt failed: .*staging database was dropped; 'app' is untouched"):
        restore.run_restore(settings, target_db=TARGET, force=True, store=store, pg=pg)
    created = [name for what, name in pg.server.log if what == "create database"]
    assert len(created) == 1 and "__restoring_" in created[0]
    assert ("drop database", created[0]) in pg.server.log
    assert sum(fed) > 2 * 1000 * 1000  # two segments' plaintext had reached pg_restore
    _untouched(pg)


def test_a_checksum_mismatch_of_an_aes_256_cbc_backup_stops_before_anything_is_decrypted(make_settings, store, pg):
    cbc = make_settings(BACKUP_ENCRYPTION="aes-256-cbc")
    pg.add_database("app", archive(tables=3, size=256 * 1024))
    taken = backup.run_backup(cbc, store=store, pg=pg, now=WHEN)
    pg.add_database(TARGET, TARGET_CONTENT)
    _flip(store, taken["object_key"], 100 * 1024)  # CBC is not authenticated: only the checksum tells
    with pytest.raises(ChecksumMismatchError, match="SHA-256 of .* but its metadata says .*staging database was "
                                                    "dropped; 'app' is untouched") as info:
        restore.run_restore(cbc, target_db=TARGET, force=True, store=store, pg=pg)
    assert info.value.step == "verify checksum"
    staging = [name for what, name in pg.server.log if what == "create database"]
    assert staging and all(("drop database", name) in pg.server.log for name in staging)
    _untouched(pg)


def test_a_checksum_mismatch_of_a_new_database_leaves_no_database(make_settings, store, pg):
    cbc = make_settings(BACKUP_ENCRYPTION="aes-256-cbc")
    taken = backup.run_backup(cbc, store=store, pg=pg, now=WHEN)
    _flip(store, taken["object_key"], 40)
    with pytest.raises(ChecksumMismatchError):
        restore.run_restore(cbc, target_db="incident", store=store, pg=pg)
    assert sorted(pg.server.databases) == ["app"] and "incident" not in pg.server.databases


@pytest.mark.parametrize("forge", ["a field changed", "unsigned"])
def test_forged_or_unsigned_metadata_is_refused_before_a_download(settings, store, pg, taken, forge):
    document = json.loads(store.data(taken["metadata_key"]).decode())
    if forge == "a field changed":
        document["checksum_sha256"] = "0" * 64  # the signature no longer covers what the document says
    else:
        del document["signature"]
    store.put_object(taken["metadata_key"], documents.encode_metadata(document))
    for attempt in (lambda: restore.run_restore(settings, target_db="incident", store=store, pg=pg),
                    lambda: restore.run_verify(settings, store=store, pg=pg)):
        with pytest.raises(IntegrityError, match="signature" if forge == "a field changed" else "unsigned") as info:
            attempt()
        assert info.value.step == "verify metadata"
        assert isinstance(info.value, TamperedError) == (forge == "a field changed")
    assert _downloads(store, taken) == [] and pg.server.log == []
    _untouched(pg)


def test_verify_of_an_object_cut_short_in_the_bucket_fails_without_downloading(settings, store, pg, taken):
    store.put_object(taken["object_key"], store.data(taken["object_key"])[:1024 * 1024])
    with pytest.raises(IntegrityError, match="object is 1048576 bytes but its metadata says .*cut short") as info:
        restore.run_verify(settings, store=store, pg=pg)
    assert (info.value.step, info.value.exit_code) == ("select", EXIT_INTEGRITY)
    assert _downloads(store, taken) == []


def test_verify_of_a_download_cut_short_fails_naming_the_bytes(settings, store, pg, taken):
    store.inject("iter_object", key=taken["object_key"], cut=1536 * 1024)
    with pytest.raises(IntegrityError, match="downloaded 1572864 bytes of .*, metadata says %d" % taken["size_bytes"]) as info:
        restore.run_verify(settings, store=store, pg=pg)
    assert (info.value.step, info.value.exit_code) == ("download", EXIT_INTEGRITY)
    _untouched(pg)


def test_verify_of_a_whole_backup_reports_it(settings, store, pg, taken):
    verified = restore.run_verify(settings, store=store, pg=pg)
    assert (verified["checksum_sha256"], verified["table_count"], verified["trusted"]) == (
        taken["checksum_sha256"], 3, True)
    assert pg.server.log == []  # verify touches no database
