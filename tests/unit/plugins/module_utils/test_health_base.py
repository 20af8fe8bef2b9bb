# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The base rule of health (WAL_ARCHIVING): no usable base backup of the host is critical (point-in-time recovery has
nothing to start from), the newest older than BASE_MAX_AGE_DAYS a warning; health's JSON says which is the newest, when
and how old. A forged or unsigned newest base backup does not count."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime

import pytest

from ansible_collections.quankey.backup.plugins.module_utils import config
from ansible_collections.quankey.backup.plugins.module_utils.catalog import layout
from ansible_collections.quankey.backup.plugins.module_utils.errors import AccessDeniedError, ConfigError
from ansible_collections.quankey.backup.plugins.module_utils.workflows import health
from ansible_collections.quankey.backup.tests.unit.plugins.module_utils.workflows.fakes import ENV, MemoryStore
from ansible_collections.quankey.backup.tests.unit.plugins.module_utils.workflows.test_workflow_wal_prune import _base

UTC = datetime.timezone.utc
NOW = datetime.datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)
START = "000000010000000000000020"


def _days_ago(days):
    return NOW - datetime.timedelta(days=days)


def _settings(**more):
    values = dict(ENV, WAL_ARCHIVING="true")
    values.update(more)
    return config.settings_from_env(values)


def _check(settings, store):
    return health.check_health(settings, store=store, now=NOW, list_backups=lambda s, st: ([], []))


def _base_rule(report):
    return [(item["severity"], item["message"]) for item in report["findings"] if item["rule"] == "base"]


def test_the_rule_alone_critical_without_a_base_backup_and_a_warning_when_the_newest_is_too_old():
    settings = _settings()
    store = MemoryStore(ENV["S3_BUCKET"], now=NOW)
    fresh = layout.BaseRecord("db1", _base(settings, store, _days_ago(1), START), "m", "o", 10)
    stale = layout.BaseRecord("db1", _base(settings, store, _days_ago(9.5), START), "m", "o", 10)
    assert health.base_findings(fresh, NOW, 8) == []
    (finding,) = health.base_findings(stale, NOW, 8)
    assert (finding["rule"], finding["severity"]) == ("base", "warning")
    assert "is 9.5 days old (limit 8 days, BASE_MAX_AGE_DAYS)" in finding["message"]
    (finding,) = health.base_findings(None, NOW, 8, where="s3://b/base/db1/")
    assert finding["severity"] == "critical" and "no base backup of this host in s3://b/base/db1/" in finding["message"]
    assert "point-in-time recovery has nothing to start from" in finding["message"]


def test_a_fresh_signed_base_backup_is_healthy_and_named_in_the_report(store):
    settings = _settings()
    name = _base(settings, store, _days_ago(2), START)
    report = _check(settings, store)
    assert _base_rule(report) == []
    assert report["base"] == {"count": 1, "newest": name, "timestamp": "2026-11-28T12:00:00Z", "age_days": 2.0,
                              "start_wal_file": START, "signature": report["base"]["signature"]}
    assert report["base"]["signature"].startswith("valid (key ")
    assert "  base: newest %s, 2.0 days old; 1 base backup(s)" % name in health.report_lines(report)


def test_no_base_backup_is_critical_and_an_old_one_a_warning(store):
    settings = _settings()
    report = _check(settings, store)
    (severity, message), = _base_rule(report)
    assert severity == "critical" and "no base backup of this host in s3://backups/base/db1/" in message
    assert report["base"]["count"] == 0 and report["base"]["newest"] is None and report["status"] == "critical"
    old = _base(settings, store, _days_ago(10), START)
    (severity, message), = _base_rule(_check(settings, store))
    assert severity == "warning" and "the newest base backup, %s, is 10.0 days old (limit 8 days" % old in message
    assert _base_rule(_check(_settings(BASE_MAX_AGE_DAYS="14"), store)) == []


def test_an_unsigned_newest_base_backup_does_not_count(store):
    settings = _settings()
    good = _base(settings, store, _days_ago(3), START)
    planted = _base(settings, store, _days_ago(1), START, sign=False)
    report = _check(settings, store)
    (severity, message), = _base_rule(report)
    assert severity == "warning" and "a base backup newer than %s is not usable" % good in message
    assert planted in message and report["base"]["newest"] == good
    alone = MemoryStore(ENV["S3_BUCKET"], now=NOW)
    _base(settings, alone, _days_ago(1), START, sign=False)
    (severity, message), = _base_rule(_check(settings, alone))
    assert severity == "critical" and "no usable base backup of this host" in message and "(1 listed; the newest: " in message


def test_a_base_backup_without_its_data_object_does_not_count(store):
    settings = _settings()
    name = _base(settings, store, _days_ago(1), START)
    store.delete(layout.base_object_key("", "db1", name))
    (severity, message), = _base_rule(_check(settings, store))
    assert severity == "critical" and "%s has no data object" % name in message


def test_credentials_that_may_not_list_base_backups_get_a_warning(store):
    store.inject("list_objects", "base/db1/", before=AccessDeniedError("AccessDenied: ListObjectsV2 on base/db1/"))
    report = _check(_settings(), store)
    (severity, message), = _base_rule(report)
    assert severity == "warning" and "base backups not listed" in message and report["base"] is None


def test_no_base_rule_unless_the_host_archives_wal(store):
    settings = config.settings_from_env(dict(ENV))
    _base(settings, store, _days_ago(30), START)
    report = _check(settings, store)
    assert report["base"] is None and _base_rule(report) == []


def test_the_age_limit_is_a_setting_with_bounds():
    assert _settings().base_max_age_days == 8
    with pytest.raises(ConfigError, match="BASE_MAX_AGE_DAYS"):
        _settings(BASE_MAX_AGE_DAYS="0")
