# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The health rules, on listings built in memory."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime

import pytest

from ansible_collections.quankey.backup.plugins.module_utils import catalog, health

UTC = datetime.timezone.utc
NOW = datetime.datetime(2025, 8, 20, 12, 0, 0, tzinfo=UTC)
MIB = 1024 * 1024


def _series(hours_ago, size=20 * MIB, encryption="aes-256-gcm", object_size=None):
    meta, objs = [], []
    for ago in hours_ago:
        base = catalog.backup_basename("q", NOW - datetime.timedelta(hours=ago))
        meta.append({"key": catalog.metadata_key("", "db1", "d", base), "size": 1})
        objs.append({"key": catalog.object_key("", "db1", "d", base), "size": size if object_size is None else object_size})
    records = catalog.records_from_listing("", meta, objs)[0]
    for record in records:
        record.metadata = {"size_bytes": size, "encryption": encryption}
    return records


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
    recent = {"key": "backups/postgresql/db1/d/x.encrypted", "last_modified": NOW - datetime.timedelta(hours=1)}
    old = {"key": "backups/postgresql/db1/d/y.encrypted", "last_modified": NOW - datetime.timedelta(hours=30)}
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
