# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The drill's failure paths on fakes of S3 and PostgreSQL: the scratch database is dropped whatever happens, a
failed restore is a failed report (stored), an interrupted drill stores none. Checks that need SQL (row counts,
assertions) run on the real test bed (tests/functional/test_drill.py)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import json

import pytest

from ansible_collections.quankey.backup.plugins.module_utils import keys
from ansible_collections.quankey.backup.plugins.module_utils.errors import NotFoundError, PostgresError
from ansible_collections.quankey.backup.plugins.module_utils.formats import signing
from ansible_collections.quankey.backup.plugins.module_utils.workflows import backup, drill
from ansible_collections.quankey.backup.tests.unit.plugins.module_utils.workflows.fakes import archive
from ansible_collections.quankey.backup.tests.unit.plugins.module_utils.workflows.test_workflow_wal_prune import _base

UTC = datetime.timezone.utc
WHEN = datetime.datetime(2025, 8, 20, 3, 0, 0, tzinfo=UTC)
LATER = datetime.datetime(2025, 8, 21, 4, 0, 0, tzinfo=UTC)


@pytest.fixture
def taken(settings, store, pg):
    pg.add_database("app", archive(tables=3, size=256 * 1024))
    result = backup.run_backup(settings, store=store, pg=pg, now=WHEN)
    del pg.server.log[:]
    return result


def _scratch_left(pg):
    return [name for name in pg.server.databases if name.startswith(drill.SCRATCH_PREFIX)]


def _stored(store, report):
    return json.loads(store.data(report["report_key"]))


def test_a_drill_through_the_fakes_passes_stores_a_signed_report_and_drops_its_scratch(settings, store, pg, taken):
    result = drill.run_drill(settings, store=store, pg=pg, now=LATER)
    assert result["status"] == drill.PASSED
    [report] = result["drills"]
    assert report["backup"] == taken["name"] and report["rpo_seconds"] == 25 * 3600.0
    assert [item["name"] for item in report["checks"]] == ["restore", "checksum", "signature", "table_count"]
    assert report["report_key"] == "drills/db1/app/20250821_040000.json" and report["signed"] is True
    stored = _stored(store, report)
    assert signing.signature_key_id(stored) == taken["signing_key_id"] and "signed" not in stored
    assert ("drop database", report["scratch_database"]) in pg.server.log and _scratch_left(pg) == []
    assert [name for name, info in pg.server.roles.items() if info["login"]] == []  # the assertion login is gone too


def test_a_modified_object_fails_the_drill_and_the_failed_report_is_stored(settings, store, pg, taken):
    data = bytearray(store.data(taken["object_key"]))
    data[100] ^= 1
    store.put_object(taken["object_key"], bytes(data))
    result = drill.run_drill(settings, store=store, pg=pg, now=LATER)
    assert result["status"] == drill.FAILED
    [report] = result["drills"]
    assert report["result"] == drill.FAILED and report["error"] and report["rto_seconds"] is None
    assert [item["ok"] for item in report["checks"]] == [False]
    assert _stored(store, report)["result"] == drill.FAILED
    assert _scratch_left(pg) == []


def test_an_interrupted_drill_drops_its_scratch_and_stores_no_report(settings, store, pg, taken, monkeypatch):
    seen = []

    def interrupted(metadata):  # Ctrl-C once the restore is done: the scratch database exists
        seen.extend(_scratch_left(pg))
        raise KeyboardInterrupt()

    monkeypatch.setattr(drill.documents, "row_counts_of", interrupted)
    with pytest.raises(KeyboardInterrupt):
        drill.run_drill(settings, store=store, pg=pg, now=LATER)
    assert len(seen) == 1 and _scratch_left(pg) == []
    assert [name for name, info in pg.server.roles.items() if info["login"]] == []
    assert not [key for key in store.keys() if key.startswith("drills/")]


def test_a_scratch_that_cannot_be_dropped_is_said_and_the_drill_still_reports(settings, store, pg, taken, caplog):
    pg.fail("drop_database", PostgresError("connection lost"))
    result = drill.run_drill(settings, store=store, pg=pg, now=LATER)
    assert result["status"] == drill.PASSED
    assert "could not drop the drill's scratch database %s" % result["drills"][0]["scratch_database"] in caplog.text


def test_nothing_to_drill(settings, store, pg):
    with pytest.raises(NotFoundError, match="no backup of app on host db1 to drill"):
        drill.run_drill(settings, store=store, pg=pg)
    assert drill.run_drill(settings, store=store, pg=pg, all_hosts=True) == {"status": drill.NONE, "drills": []}


def test_a_logical_drill_of_a_physical_only_host_says_to_drill_it_point_in_time(settings, store, pg):
    with pytest.raises(NotFoundError) as plain:
        drill.plan_drill(settings, store=store)
    assert "drill --pitr" not in str(plain.value)  # nothing at all in the bucket: the plain message
    _base(settings, store, datetime.datetime(2026, 11, 29, 3, 0, tzinfo=datetime.timezone.utc),
          "000000010000000000000020")
    for attempt in (lambda: drill.run_drill(settings, store=store, pg=pg),
                    lambda: drill.plan_drill(settings, store=store)):
        with pytest.raises(NotFoundError) as caught:
            attempt()
        message = str(caught.value)
        assert message.startswith("no backup of app on host db1 to drill in ")
        assert "host db1 makes no dumps but has 1 base backup(s) (pg_backup_kind physical)" in message
        assert "`quankey-backup drill --pitr --host db1`" in message and "restore_drill_pitr_hosts" in message


def test_a_drill_host_without_a_signing_key_stores_the_report_unsigned_and_says_so(
        settings, store, pg, taken, monkeypatch, caplog):
    """As a hybrid-pq drill host without BACKUP_SIGNING_KEY: it opens the backups but can neither check nor sign."""
    monkeypatch.setattr(keys.KeyContext, "signing_keys", lambda context: (None, None, {}))
    result = drill.run_drill(settings, store=store, pg=pg, now=LATER)
    [report] = result["drills"]
    assert result["status"] == drill.PASSED and report["signed"] is False
    assert "signature" not in [item["name"] for item in report["checks"]]
    assert signing.SIGNATURE_FIELD not in _stored(store, report)
    assert "is stored unsigned: this host holds no signing key" in caplog.text
    assert "the metadata signature of %s was not checked" % taken["name"] in caplog.text


def test_the_plan_names_what_would_be_drilled_and_changes_nothing(settings, store, pg, taken):
    before = sorted(store.keys())
    assert drill.plan_drill(settings, store=store, now=LATER) == [
        {"host": "db1", "database": "app", "backup": taken["name"], "backup_timestamp": "2025-08-20T03:00:00Z",
         "rpo_seconds": 25 * 3600.0}]
    assert sorted(store.keys()) == before and pg.server.log == []
    assert drill.plan_drill(settings, store=store, all_hosts=True, now=LATER)[0]["backup"] == taken["name"]
    with pytest.raises(NotFoundError):
        drill.plan_drill(settings, store=store, host="db9")
