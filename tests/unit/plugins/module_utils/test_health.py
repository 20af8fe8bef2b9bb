# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The health rules, on listings built in memory."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import datetime
import os

import pytest

from ansible_collections.quankey.backup.plugins.module_utils import config, keys
from ansible_collections.quankey.backup.plugins.module_utils.catalog import layout
from ansible_collections.quankey.backup.plugins.module_utils.formats import crypto, signing
from ansible_collections.quankey.backup.plugins.module_utils.workflows import health, wiring

UTC = datetime.timezone.utc
NOW = datetime.datetime(2025, 8, 20, 12, 0, 0, tzinfo=UTC)
MIB = 1024 * 1024


def _series(hours_ago, size=20 * MIB, encryption="aes-256-gcm", object_size=None):
    meta, objs = [], []
    for ago in hours_ago:
        base = layout.backup_basename("q", NOW - datetime.timedelta(hours=ago))
        meta.append({"key": layout.metadata_key("", "db1", "d", base), "size": 1})
        objs.append({"key": layout.object_key("", "db1", "d", base), "size": size if object_size is None else object_size})
    records = layout.records_from_listing("", meta, objs)[0]
    for record in records:
        record.metadata = dict(_names(record), size_bytes=size, encryption=encryption)
    return records


def _names(record):
    """The fields by which a document names the backup stored where it was read (trust.naming_problem)."""
    return {"host": record.host, "database": record.db, "name": record.basename, "object_key": record.object_key,
            "timestamp": layout.format_timestamp(record.timestamp)}


@pytest.fixture(autouse=True)
def no_database_server(monkeypatch):
    """These tests are about S3's side: no PostgreSQL is asked for leftovers."""
    monkeypatch.setattr(wiring, "postgres_or_none", lambda settings, pg=None: pg)


def _rules(findings):
    return sorted((f["rule"], f["severity"]) for f in findings)


def test_daily_backups_are_healthy():
    findings = health.assess(_series([9 + 24 * i for i in range(10)]), [], NOW, health.HealthPolicy())
    assert findings == []
    assert health.overall_status(findings) == "ok"


def test_no_backups_is_critical():
    findings = health.assess([], [], NOW, health.HealthPolicy())
    assert _rules(findings) == [("no_backups", "critical")]


def test_latest_older_than_36_hours_is_critical():
    findings = health.assess(_series([37, 61, 85]), [], NOW, health.HealthPolicy())
    assert ("age", "critical") in _rules(findings)
    assert health.overall_status(findings) == "critical"
    assert "37.0 h old" in [f for f in findings if f["rule"] == "age"][0]["message"]


def test_small_backup_is_a_warning():
    findings = health.assess(_series([2, 26, 50], size=1000), [], NOW, health.HealthPolicy())
    assert _rules(findings) == [("min_size", "warning")]


def test_object_missing_or_resized_is_critical():
    records = _series([2, 26])
    records[0].object_size = None
    assert ("missing_object", "critical") in _rules(health.assess(records, [], NOW, health.HealthPolicy()))
    records = _series([2, 26], object_size=5)
    assert ("size_mismatch", "critical") in _rules(health.assess(records, [], NOW, health.HealthPolicy()))


def test_encryption_problems_are_critical():
    findings = health.assess(_series([2, 26], encryption="none"), [], NOW, health.HealthPolicy())
    assert ("encryption", "critical") in _rules(findings)
    findings = health.assess(_series([2, 26]), [], NOW, health.HealthPolicy(), header_error="plaintext pg_dump archive")
    assert [f["message"] for f in findings if f["rule"] == "encryption"] == [
        "latest object failed the encryption check: plaintext pg_dump archive"]


def test_missed_runs_lower_the_frequency():
    # 7 days of a daily schedule, but only three runs happened
    findings = health.assess(_series([2, 50, 160]), [], NOW, health.HealthPolicy())
    assert _rules(findings) == [("frequency", "warning")]
    # a 6-hour schedule expects four a day
    findings = health.assess(_series([2 + 24 * i for i in range(7)]), [], NOW, health.HealthPolicy(interval_hours=6))
    assert ("frequency", "warning") in _rules(findings)


def test_a_new_host_is_not_blamed_for_days_before_its_first_backup():
    findings = health.assess(_series([2, 26]), [], NOW, health.HealthPolicy())
    assert findings == []


def test_sharp_size_drop_is_a_warning():
    records = _series([2 + 24 * i for i in range(5)])
    records[0].metadata["size_bytes"] = 5 * MIB
    records[0].object_size = 5 * MIB
    findings = health.assess(records, [], NOW, health.HealthPolicy())
    assert _rules(findings) == [("size_drop", "warning")]


def test_old_orphans_are_a_warning_recent_ones_are_not():
    recent = {"key": "backups/postgresql/db1/d/x.encrypted", "size": 5, "last_modified": NOW - datetime.timedelta(hours=1)}
    old = {"key": "backups/postgresql/db1/d/y.encrypted", "size": 7, "last_modified": NOW - datetime.timedelta(hours=30)}
    series = _series([2, 26])
    assert health.assess(series, [recent], NOW, health.HealthPolicy()) == []
    assert _rules(health.assess(series, [recent, old], NOW, health.HealthPolicy())) == [("orphans", "warning")]


@pytest.mark.parametrize("schedule,hours", [("daily", 24), ("12-hour", 12), ("6-hour", 6), ("8", 8.0)])
def test_schedule_presets(schedule, hours):
    assert health.interval_for_schedule(schedule) == hours


def test_unknown_schedule_is_a_config_error():
    from ansible_collections.quankey.backup.plugins.module_utils.errors import ConfigError
    with pytest.raises(ConfigError, match="BACKUP_SCHEDULE"):
        health.interval_for_schedule("weekly-ish")


def test_exit_codes_follow_monitoring_conventions():
    assert health.EXIT_CODES == {"ok": 0, "warning": 1, "critical": 2}


def _with_key_ids(records, *kids):
    for record, kid in zip(records, kids):
        record.metadata.update(key_id=kid, envelope={"key_id": kid})
    return records


KID_NEW, KID_OLD, KID_LOST = "qk1-1111111111111111", "qk1-2222222222222222", "qk1-3333333333333333"


def test_every_recent_object_header_is_checked():
    records = _series([2, 26, 50])
    findings = health.assess(records, [], NOW, health.HealthPolicy(),
                             header_errors={records[1].basename: "the object is a plaintext pg_dump archive"})
    assert [(f["rule"], f["severity"], f["message"]) for f in findings] == [
        ("encryption", "critical", "backup %s failed the encryption check: the object is a plaintext pg_dump archive"
         % records[1].basename)]


def test_key_ids_are_not_checked_without_keys():
    records = _with_key_ids(_series([2, 26]), KID_LOST, KID_LOST)
    assert health.assess(records, [], NOW, health.HealthPolicy(), keyring_ids=None) == []


def test_key_ids_the_keyring_holds_are_fine():
    records = _with_key_ids(_series([2, 26]), KID_NEW, KID_OLD)
    assert health.assess(records, [], NOW, health.HealthPolicy(), keyring_ids=[KID_NEW, KID_OLD]) == []


def test_an_unknown_key_id_is_a_warning_naming_the_backup_and_the_key():
    records = _with_key_ids(_series([2, 26, 50]), KID_NEW, KID_LOST, KID_LOST)
    findings = health.assess(records, [], NOW, health.HealthPolicy(), keyring_ids=[KID_NEW])
    assert _rules(findings) == [("encryption", "warning")]
    message = findings[0]["message"]
    assert message.startswith("backup %s (and 1 more of the newest 3) is wrapped with key %s, which this host does "
                              "not hold: it cannot be restored here" % (records[1].basename, KID_LOST))
    assert health.overall_status(findings) == "warning"


def test_the_envelope_key_id_is_the_one_that_counts():
    records = _with_key_ids(_series([2]), KID_NEW)
    records[0].metadata["envelope"]["key_id"] = KID_LOST
    findings = health.assess(records, [], NOW, health.HealthPolicy(), keyring_ids=[KID_NEW])
    assert KID_LOST in findings[0]["message"]


def test_unreadable_keys_are_a_warning():
    findings = health.assess(_series([2, 26]), [], NOW, health.HealthPolicy(),
                             keyring_error="keyring file /k is mode 0644 and holds keys: chmod 0600 /k")
    assert _rules(findings) == [("encryption", "warning")]
    assert "chmod 0600 /k" in findings[0]["message"]


class _Store:
    """Answers ranged reads with a header per object key."""

    def __init__(self, headers):
        self.headers = headers
        self.ranges = []

    def get_range(self, key, start, length):
        self.ranges.append((key, start, length))
        return self.headers[key][start:start + length]

    @staticmethod
    def list_multipart_uploads(prefix):
        return []

    @staticmethod
    def list_objects(prefix):  # no drill reports (workflows/drill.py)
        return []


def test_check_health_reads_only_the_headers_of_the_newest_and_compares_key_ids():
    active, old = os.urandom(32), os.urandom(32)
    records = _series([2 + 24 * i for i in range(10)], size=2 * MIB)
    data_keys = [os.urandom(32) for _record in records]
    headers = dict((record.object_key, crypto.StreamEncryptor(data_key).finalize()[:crypto.HEADER_SIZE])
                   for record, data_key in zip(records, data_keys))
    headers[records[2].object_key] = b"PGDMP" + bytes(60)
    store = _Store(headers)
    masters = [active] * 2 + [old] * 8
    env = {"DB_NAME": "d", "S3_BUCKET": "b", "BACKUP_HOST_ID": "db1", "BACKUP_ENCRYPTION_KEY": base64.b64encode(active).decode(),
           "BACKUP_GLOBALS": "false"}  # the globals rule has its own test
    settings = config.settings_from_env(env)

    def loader(store_, record):
        number = records.index(record)
        envelope = crypto.wrap_data_key(masters[number], data_keys[number], binding=keys.identity_binding(record))
        record.metadata.update(key_id=crypto.key_id(masters[number]), encryption="aes-256-gcm", envelope=envelope)
        record.metadata.update(signing.sign_metadata(record.metadata, crypto.key_id(active), signing.derive_signing_key(active)))
        return record.metadata

    report = health.check_health(settings, store=store, now=NOW, list_backups=lambda s, st: (records, []),
                                 load_metadata=loader)
    assert [key for key, _start, _length in store.ranges] == [r.object_key for r in records[:health.METADATA_LOOKBACK]]
    assert all((start, length) == (0, crypto.HEADER_SIZE) for _key, start, length in store.ranges)
    assert report["keyring_key_ids"] == [crypto.key_id(active)]
    assert sorted((f["rule"], f["severity"]) for f in report["findings"]) == [("encryption", "critical"),
                                                                              ("encryption", "warning")]
    critical = [f["message"] for f in report["findings"] if f["severity"] == "critical"][0]
    assert records[2].basename in critical and "plaintext" in critical
    warning = [f["message"] for f in report["findings"] if f["severity"] == "warning"][0]
    assert crypto.key_id(old) in warning and "(and 5 more of the newest 8)" in warning

    with_old = config.settings_from_env(dict(env, BACKUP_DECRYPTION_KEYS=base64.b64encode(old).decode()))
    report = health.check_health(with_old, store=_Store(headers), now=NOW, list_backups=lambda s, st: (records, []),
                                 load_metadata=loader)
    assert [f["severity"] for f in report["findings"]] == ["critical"]


def test_the_newest_backups_data_key_must_open_for_its_place_and_fit_its_object():
    master = os.urandom(32)
    records = _series([2, 26], size=2 * MIB)
    data_key = os.urandom(32)
    headers = dict((record.object_key, crypto.StreamEncryptor(data_key).finalize()[:crypto.HEADER_SIZE]) for record in records)
    settings = config.settings_from_env({"DB_NAME": "d", "S3_BUCKET": "b", "BACKUP_HOST_ID": "db1",
                                         "BACKUP_ENCRYPTION_KEY": base64.b64encode(master).decode()})

    def check(envelope_of):
        def loader(store_, record):
            record.metadata.update(key_id=crypto.key_id(master), encryption="aes-256-gcm", envelope=envelope_of(record))
            return record.metadata
        report = health.check_health(settings, store=_Store(dict(headers)), now=NOW,
                                     list_backups=lambda s, st: (records, []), load_metadata=loader)
        return [f for f in report["findings"] if f["rule"] == "encryption"]

    assert check(lambda record: crypto.wrap_data_key(master, data_key, binding=keys.identity_binding(record))) == []
    # the newest's envelope is the older backup's (copied within the bucket): its wrap names the other place
    copied = check(lambda record: crypto.wrap_data_key(master, data_key, binding=keys.identity_binding(records[1])))
    assert [f["severity"] for f in copied] == ["critical"] and "copied from another backup" in copied[0]["message"]
    # a data key that opens but is not the object's: the header's key commitment says so
    other = check(lambda record: crypto.wrap_data_key(master, os.urandom(32), binding=keys.identity_binding(record)))
    assert [f["severity"] for f in other] == ["critical"] and "key commitment" in other[0]["message"]


def test_leftovers_older_than_an_hour_are_warnings_naming_size_and_age():
    found = {"orphans": [], "restore_logins": [{"name": "quankey_restore_0a1b2c3d", "expired": True},
                                               {"name": "quankey_restore_00000000", "expired": False}],
             "uploads": [{"key": "backups/postgresql/db1/d/d_backup_20250820_100000.encrypted", "upload_id": "u",
                          "size_bytes": 3 * MIB, "parts": 2, "age_hours": 2.0},
                         {"key": "k2", "upload_id": "v", "size_bytes": 0, "parts": 0, "age_hours": 0.2}],
             "staging_databases": [{"name": "d_restored__restoring_250820100000_ab12", "target": "d_restored",
                                    "size_bytes": 221 * MIB, "sessions": 0, "age_hours": 2.0}]}
    messages = [f["message"] for f in health.leftover_findings(found, health.HealthPolicy())]
    assert len(messages) == 3 and all(f.startswith(("staging", "open", "restore")) for f in messages)
    assert "221.0 MiB, 2.0 h old" in messages[0] and "3.0 MiB in 2 parts, 2.0 h without news" in messages[1]
    assert "quankey_restore_0a1b2c3d (expired)" in messages[2]
    assert all("prune" in message for message in messages)


def _report(**fields):
    report = {"host": "db1", "database": "quankey_prod", "bucket": "backups", "latest": None, "backups": 0,
              "findings": [], "status": "ok"}
    report.update(fields)
    return report


def test_report_lines_give_the_status_the_latest_backup_and_each_finding():
    latest = {"name": "q_backup_20250820_030000", "age_hours": 9.0, "size_bytes": 3 * MIB, "object_size": 3 * MIB}
    findings = [{"rule": "min_size", "severity": "warning", "message": "latest backup is 3.0 MiB, under the minimum"},
                {"rule": "seed_backups", "severity": "info", "message": "2 backup(s) made by the seed's scripts"}]
    lines = health.report_lines(_report(status="warning", latest=latest, backups=12, findings=findings))
    assert lines == [
        "WARNING: backups of quankey_prod on db1 in s3://backups",
        "  latest: q_backup_20250820_030000, 9.0 h old, 3.0 MiB, 12 backup(s) in all",
        "  WARNING  min_size           latest backup is 3.0 MiB, under the minimum",
        "  INFO     seed_backups       2 backup(s) made by the seed's scripts",
    ]


def test_report_lines_of_a_report_without_backups_or_metadata():
    no_backups = [{"rule": "no_backups", "severity": "critical", "message": "no backups found"}]
    assert health.report_lines(_report(status="critical", findings=no_backups)) == [
        "CRITICAL: backups of quankey_prod on db1 in s3://backups", "  CRITICAL no_backups         no backups found"]
    unread = {"name": "q_backup_20250820_030000", "age_hours": 1.25, "object_size": None}
    assert health.report_lines(_report(latest=unread, backups=1))[1] == (
        "  latest: q_backup_20250820_030000, 1.2 h old, size unknown, 1 backup(s) in all")


def test_report_lines_of_a_real_assessment_name_every_rule_that_fired(monkeypatch):
    records = _series([60 + 24 * i for i in range(5)], size=1024)
    findings = health.assess(records, [], NOW, health.HealthPolicy())
    report = health._finish(_report(latest=dict(records[0].summary(), age_hours=60.0), backups=5), findings)
    lines = health.report_lines(report)
    assert lines[0].startswith("CRITICAL: ")
    assert [line.split()[1] for line in lines[2:]] == [finding["rule"] for finding in findings]
    assert {"age", "min_size"} <= set(finding["rule"] for finding in findings)


def test_a_latest_backup_without_globals_is_said_while_backups_are_meant_to_keep_them():
    records = _series([2, 26], size=2 * MIB)
    headers = dict((record.object_key, crypto.StreamEncryptor(os.urandom(32)).finalize()[:crypto.HEADER_SIZE])
                   for record in records)
    env = {"DB_NAME": "d", "S3_BUCKET": "b", "BACKUP_HOST_ID": "db1"}
    report = health.check_health(config.settings_from_env(env), store=_Store(headers), now=NOW,
                                 list_backups=lambda s, st: (records, []), load_metadata=lambda st, r: r.metadata)
    found = [finding for finding in report["findings"] if finding["rule"] == "globals"]
    assert [finding["severity"] for finding in found] == ["info"]
    assert records[0].basename in found[0]["message"] and "BACKUP_GLOBALS" in found[0]["message"]
    off = health.check_health(config.settings_from_env(dict(env, BACKUP_GLOBALS="false")), store=_Store(headers), now=NOW,
                              list_backups=lambda s, st: (records, []), load_metadata=lambda st, r: r.metadata)
    assert not [finding for finding in off["findings"] if finding["rule"] == "globals"]
    records[0].metadata["globals"] = {"object_key": "k", "size_bytes": 1, "checksum_sha256": "a" * 64, "roles": 2,
                                      "memberships": 1, "tablespaces": 0, "passwords": "omitted"}
    kept = health.check_health(config.settings_from_env(env), store=_Store(headers), now=NOW,
                               list_backups=lambda s, st: (records, []), load_metadata=lambda st, r: r.metadata)
    assert not [finding for finding in kept["findings"] if finding["rule"] == "globals"]
    assert "  globals: 2 role(s), 1 membership(s), 0 tablespace(s), passwords omitted" in health.report_lines(kept)


def test_the_lock_rule_warns_when_the_only_locked_good_backup_is_about_to_be_unlocked():
    policy = health.HealthPolicy()
    hours = datetime.timedelta(hours=1)
    fine = [("b3", NOW + 600 * hours), ("b2", NOW + 576 * hours), ("b1", NOW + 30 * hours)]
    assert health.lock_findings(fine, NOW, policy) == []
    assert health.lock_findings([], NOW, policy) == []
    last = health.lock_findings([("b3", NOW + 30 * hours), ("b2", NOW - hours)], NOW, policy)
    assert [(item["rule"], item["severity"]) for item in last] == [("object_lock", "warning")]
    assert last[0]["message"].startswith("the only locked good backup, b3, is locked until 2025-08-21T18:00:00Z (30 h")
    assert health.lock_findings([("b3", NOW + 100 * hours)], NOW, policy) == []  # not soon: 100 h > 48 h
    unlocked = health.lock_findings([("b3", None), ("b2", NOW - hours)], NOW, policy, "the object_lock_mode option")
    assert [item["message"].split(",")[0] for item in unlocked] == [
        "latest good backup b3 is not locked", "no good backup is locked any more (of the newest 2): nothing stops "
        "their deletion"]
    assert "the object_lock_mode option asks for it" in unlocked[0]["message"]
