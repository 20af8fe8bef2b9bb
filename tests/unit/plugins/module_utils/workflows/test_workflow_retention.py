# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Prune with the calendar rules (BACKUP_KEEP_DAILY/_WEEKLY/_MONTHLY/_YEARLY) on fakes of S3 and PostgreSQL: each
backup's fate and rules in the result, and exactly the backups no rule keeps deleted."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import json

from ansible_collections.quankey.backup.plugins.module_utils.catalog import documents
from ansible_collections.quankey.backup.plugins.module_utils.errors import AccessDeniedError
from ansible_collections.quankey.backup.plugins.module_utils.workflows import backup, prune

UTC = datetime.timezone.utc
NOW = datetime.datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)


def _at(text):
    return datetime.datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=UTC)


def test_prune_keeps_what_the_calendar_rules_keep_and_says_why(make_settings, store, pg):
    settings = make_settings(BACKUP_RETENTION_DAYS="3", BACKUP_MIN_KEEP="1", BACKUP_KEEP_DAILY="2",
                             BACKUP_KEEP_WEEKLY="2", BACKUP_KEEP_MONTHLY="2", BACKUP_KEEP_YEARLY="2")
    times = ["2025-06-15 03:00", "2025-12-31 03:00", "2026-09-30 03:00", "2026-10-15 03:00", "2026-10-31 03:00",
             "2026-11-20 03:00", "2026-11-22 03:00", "2026-11-25 03:00", "2026-11-28 03:00", "2026-11-28 15:00",
             "2026-11-29 03:00", "2026-11-30 03:00"]
    taken = dict((when, backup.run_backup(settings, store=store, pg=pg, now=_at(when))) for when in times)
    forged = taken["2026-10-31 03:00"]  # October's newest: its signature breaks, so October's keeper is the 15th
    document = json.loads(store.data(forged["metadata_key"]).decode())
    document["table_count"] = 99
    store.put_object(forged["metadata_key"], documents.encode_metadata(document))

    dry = prune.run_prune(settings, dry_run=True, store=store, pg=pg, now=NOW)
    fates = dict((item["timestamp"], item) for item in dry["backups"])
    assert [item["name"] for item in dry["backups"]] == [taken[when]["name"] for when in reversed(times)]
    assert fates["2026-11-30T03:00:00Z"]["rules"] == ["age <= 3 days", "min_keep 1 of 1", "daily 2026-11-30",
                                                      "weekly 2026-W49", "monthly 2026-11", "yearly 2026"]
    assert fates["2026-11-29T03:00:00Z"]["rules"] == ["age <= 3 days", "daily 2026-11-29", "weekly 2026-W48"]
    assert fates["2026-11-28T15:00:00Z"]["rules"] == ["age <= 3 days"]
    assert fates["2026-10-15T03:00:00Z"]["rules"] == ["monthly 2026-10"]
    assert fates["2025-12-31T03:00:00Z"]["rules"] == ["yearly 2025"]
    forged_fate = fates["2026-10-31T03:00:00Z"]
    assert (forged_fate["fate"], forged_fate["good"]) == ("delete", False)
    assert forged_fate["problem"].startswith("metadata signature: ")
    assert forged_fate["reason"].startswith("older than 3 days and not good (metadata signature: ")
    deleted = ["2026-11-25 03:00", "2026-11-22 03:00", "2026-11-20 03:00", "2026-10-31 03:00", "2026-09-30 03:00",
               "2025-06-15 03:00"]
    assert dry["deleted"] == [taken[when]["name"] for when in deleted]
    assert fates["2026-11-22T03:00:00Z"]["reason"] == "older than 3 days and kept by no other rule"
    assert (dry["keep_daily"], dry["keep_weekly"], dry["keep_monthly"], dry["keep_yearly"]) == (2, 2, 2, 2)
    assert all(store.data(item["metadata_key"]) is not None for item in taken.values()), "a dry run deletes nothing"

    done = prune.run_prune(settings, store=store, pg=pg, now=NOW)
    assert done["deleted"] == dry["deleted"] and done["kept"] == dry["kept"]
    for when, item in taken.items():
        gone = when in deleted
        assert (store.data(item["metadata_key"]) is None) is gone, when
        assert (store.data(item["object_key"]) is None) is gone, when
    again = prune.run_prune(settings, store=store, pg=pg, now=NOW)
    assert again["deleted"] == [] and sorted(again["kept"]) == sorted(done["kept"])


def test_prune_without_calendar_rules_deletes_what_it_always_did(make_settings, store, pg):
    settings = make_settings(BACKUP_RETENTION_DAYS="7", BACKUP_MIN_KEEP="2")
    taken = [backup.run_backup(settings, store=store, pg=pg, now=NOW - datetime.timedelta(days=days))
             for days in (400, 40, 30, 20, 3)]
    result = prune.run_prune(settings, store=store, pg=pg, now=NOW)
    assert result["kept"] == [taken[4]["name"], taken[3]["name"]]
    assert result["deleted"] == [taken[2]["name"], taken[1]["name"], taken[0]["name"]]
    assert [item["rules"] for item in result["backups"]] == [["age <= 7 days", "min_keep 1 of 2"], ["min_keep 2 of 2"],
                                                             [], [], []]
    assert [item["good"] for item in result["backups"]] == [True, True, None, None, None]  # the old ones: never read


def test_prune_tags_the_monthly_and_yearly_keepers_for_the_buckets_archive_rules(make_settings, store, pg):
    """Issue 16 item 4: the lifecycle rules of playbooks/prepare_bucket.yml archive data objects tagged quankey-keep."""
    settings = make_settings(BACKUP_RETENTION_DAYS="1", BACKUP_MIN_KEEP="1", BACKUP_KEEP_MONTHLY="3",
                             BACKUP_KEEP_YEARLY="2")
    times = ["2025-12-31 03:00", "2026-10-15 03:00", "2026-11-20 03:00", "2026-11-29 03:00"]
    taken = dict((when, backup.run_backup(settings, store=store, pg=pg, now=_at(when))) for when in times)
    dry = prune.run_prune(settings, dry_run=True, store=store, pg=pg, now=NOW)
    wanted = {"2025-12-31 03:00": "yearly", "2026-10-15 03:00": "monthly", "2026-11-29 03:00": "yearly"}
    assert sorted(dry["tagged"]) == sorted(taken[when]["name"] for when in wanted)
    assert all(store.get_tags(item["object_key"]) == {} for item in taken.values()), "a dry run tags nothing"
    done = prune.run_prune(settings, store=store, pg=pg, now=NOW)
    assert sorted(done["tagged"]) == sorted(dry["tagged"]) and done["deleted"] == [taken["2026-11-20 03:00"]["name"]]
    for when, value in wanted.items():
        assert store.get_tags(taken[when]["object_key"]) == {prune.KEEP_TAG: value}
    assert prune.run_prune(settings, store=store, pg=pg, now=NOW)["tagged"] == []  # tagged once


def test_a_prune_whose_keys_may_not_tag_still_prunes_and_says_what_to_grant(make_settings, store, pg, caplog):
    settings = make_settings(BACKUP_RETENTION_DAYS="1", BACKUP_MIN_KEEP="1", BACKUP_KEEP_MONTHLY="2")
    for when in ("2026-10-15 03:00", "2026-10-20 03:00", "2026-11-20 03:00"):
        backup.run_backup(settings, store=store, pg=pg, now=_at(when))
    store.inject("get_tags", times=None, before=AccessDeniedError("S3 access denied (GetObjectTagging)"))
    done = prune.run_prune(settings, store=store, pg=pg, now=NOW)
    assert len(done["deleted"]) == 1 and done["tagged"] == []
    assert "s3:GetObjectTagging and s3:PutObjectTagging" in caplog.text
