# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The wal rule of health (WAL_ARCHIVING): pg_stat_archiver's failures and the age of the newest archived segment.
tests/functional/test_wal_archiving.py checks it against a real cluster whose archive_command is wal-push."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime

import pytest

from ansible_collections.quankey.backup.plugins.module_utils import config
from ansible_collections.quankey.backup.plugins.module_utils.errors import ConfigError, PostgresError, StorageError
from ansible_collections.quankey.backup.plugins.module_utils.workflows import health, wiring

UTC = datetime.timezone.utc
NOW = datetime.datetime(2025, 8, 20, 12, 0, 0, tzinfo=UTC)
SEG = "000000010000000000000007"


def _ago(minutes):
    return NOW - datetime.timedelta(minutes=minutes)


def _archiver(**changes):
    row = {"archive_mode": "on", "archive_command": "quankey-backup wal-push %p", "archived_count": 7,
           "last_archived_wal": SEG, "last_archived_time": _ago(2), "failed_count": 0, "last_failed_wal": None,
           "last_failed_time": None}
    row.update(changes)
    return row


def _rules(findings):
    return [(item["rule"], item["severity"]) for item in findings]


def test_archiving_that_works_and_a_recent_segment_is_healthy():
    assert health.wal_findings(_archiver(), (SEG, _ago(2)), NOW, 60) == []


def test_a_last_attempt_that_failed_after_the_last_success_is_critical_and_names_the_segment():
    failing = _archiver(failed_count=3, last_failed_wal="000000010000000000000008", last_failed_time=_ago(1))
    findings = health.wal_findings(failing, (SEG, _ago(2)), NOW, 60)
    assert _rules(findings) == [("wal", "critical")]
    message = findings[0]["message"]
    assert "WAL archiving is failing" in message and "000000010000000000000008" in message
    assert "3 failure(s)" in message and SEG in message and "wal-push's ERROR lines" in message


def test_failing_from_the_start_is_critical_too():
    never = _archiver(archived_count=0, last_archived_wal=None, last_archived_time=None, failed_count=1,
                      last_failed_wal=SEG, last_failed_time=_ago(1))
    findings = health.wal_findings(never, None, NOW, 60)
    assert _rules(findings) == [("wal", "critical"), ("wal", "critical")]
    assert "last success: none at never" in findings[0]["message"]
    assert "no WAL segment is archived" in findings[1]["message"]


def test_failures_a_success_followed_are_information_only():
    recovered = _archiver(failed_count=2, last_failed_wal=SEG, last_failed_time=_ago(5))
    findings = health.wal_findings(recovered, (SEG, _ago(2)), NOW, 60)
    assert _rules(findings) == [("wal", "info")]
    assert health.overall_status(findings) == "ok"


def test_an_old_newest_segment_is_a_warning_with_the_rpo_and_archive_timeout():
    findings = health.wal_findings(_archiver(), (SEG, _ago(95)), NOW, 60)
    assert _rules(findings) == [("wal", "warning")]
    assert "95 min old (limit 60 min)" in findings[0]["message"] and "archive_timeout" in findings[0]["message"]
    assert health.wal_findings(_archiver(), (SEG, _ago(59)), NOW, 60) == []


def test_archive_mode_off_is_critical_and_says_a_restart_is_needed():
    findings = health.wal_findings(_archiver(archive_mode="off"), (SEG, _ago(2)), NOW, 60)
    assert _rules(findings) == [("wal", "critical")]
    assert "archive_mode is off" in findings[0]["message"] and "restart" in findings[0]["message"]


def test_an_unread_archiver_is_a_warning_and_the_bucket_is_still_judged():
    findings = health.wal_findings(None, None, NOW, 60, archiver_error="connection refused", where="s3://b/wal/db1/")
    assert _rules(findings) == [("wal", "warning"), ("wal", "critical")]
    assert "connection refused" in findings[0]["message"] and "s3://b/wal/db1/" in findings[1]["message"]


def test_parse_archiver_reads_psqls_row():
    row = ["on", "x %p", "12", SEG, "1755691200.5", "0", "", ""]
    parsed = health.parse_archiver(row)
    assert parsed["archived_count"] == 12 and parsed["last_archived_wal"] == SEG
    assert parsed["last_archived_time"] == datetime.datetime(2025, 8, 20, 12, 0, 0, 500000, tzinfo=UTC)
    assert parsed["last_failed_time"] is None and parsed["last_failed_wal"] is None


class _Store:
    """A listing of WAL objects (and nothing else: no drill reports)."""

    def __init__(self, items):
        self.items = items
        self.prefixes = []

    def list_objects(self, prefix):
        self.prefixes.append(prefix)
        return [item for item in self.items if item["key"].startswith(prefix)]

    @staticmethod
    def list_multipart_uploads(prefix):
        return []


class _Pg:
    def __init__(self, row=None, error=None):
        self.row, self.error, self.sql = row, error, []

    def query(self, sql, database=None, step="query"):
        self.sql.append(sql)
        if self.error:
            raise self.error
        return [self.row]

    @staticmethod
    def side_databases():  # the leftovers rule's questions: nothing left over
        return []

    @staticmethod
    def restore_logins(role):
        return []


def _item(key, minutes):
    return {"key": key, "size": 100, "last_modified": _ago(minutes), "storage_class": "STANDARD"}


def test_the_newest_segment_is_the_newest_whole_segment_of_this_host_on_any_timeline():
    settings = config.settings_from_env({"S3_BUCKET": "b", "S3_PREFIX": "p", "BACKUP_HOST_ID": "db1"})
    store = _Store([_item("p/wal/db1/00000001/000000010000000000000003", 30),
                    _item("p/wal/db1/00000002/000000020000000000000004", 10),
                    _item("p/wal/db1/00000002/00000002.history", 1),
                    _item("p/wal/db1/00000002/000000020000000000000004.00000028.backup", 1),
                    _item("p/wal/db1/00000002/stray", 1),
                    _item("p/wal/db10/00000002/000000020000000000000009", 1)])
    assert health.newest_wal_segment(settings, store) == ("000000020000000000000004", _ago(10))
    assert store.prefixes == ["p/wal/db1/"]


@pytest.fixture
def wal_settings(monkeypatch):
    monkeypatch.setattr(wiring, "postgres_or_none", lambda settings, pg=None: pg)
    return config.settings_from_env({"S3_BUCKET": "b", "DB_NAME": "app", "BACKUP_HOST_ID": "db1",
                                     "WAL_ARCHIVING": "true", "WAL_MAX_LAG_MINUTES": "30"})


def _check(settings, store, pg):
    return health.check_health(settings, store=store, now=NOW, list_backups=lambda s, st: ([], []), pg=pg)


def test_check_health_applies_the_wal_rule_when_the_host_archives(wal_settings):
    row = ["on", "x", "5", SEG, str((_ago(40) - datetime.datetime(1970, 1, 1, tzinfo=UTC)).total_seconds()), "1",
           "000000010000000000000008", str((_ago(1) - datetime.datetime(1970, 1, 1, tzinfo=UTC)).total_seconds())]
    pg = _Pg(row)
    report = _check(wal_settings, _Store([_item("wal/db1/00000001/" + SEG, 40)]), pg)
    assert pg.sql == [health.ARCHIVER_SQL]
    wal = [item for item in report["findings"] if item["rule"] == "wal"]
    assert [item["severity"] for item in wal] == ["critical", "warning"]
    assert "000000010000000000000008" in wal[0]["message"] and "40 min old (limit 30 min)" in wal[1]["message"]
    assert report["wal"]["newest_segment"] == SEG and report["wal"]["newest_age_seconds"] == 2400.0
    assert report["wal"]["failed_count"] == 1 and "archive_command" not in report["wal"]
    assert any(line.startswith("  wal: newest archived %s, 40.0 min old" % SEG) for line in health.report_lines(report))


def test_check_health_says_why_the_archiver_was_not_read(wal_settings):
    report = _check(wal_settings, _Store([_item("wal/db1/00000001/" + SEG, 1)]),
                    _Pg(error=PostgresError("could not connect to server", step="health")))
    wal = [item for item in report["findings"] if item["rule"] == "wal"]
    assert [item["severity"] for item in wal] == ["warning"] and "could not connect" in wal[0]["message"]


def test_with_the_bucket_out_of_reach_the_server_still_says_its_archiving_fails(wal_settings):
    def unreachable(settings, store):
        raise StorageError("S3 endpoint http://127.0.0.1:9 is unreachable")
    failing = ["on", "x", "5", SEG, "1755691000", "4", "000000010000000000000008", "1755691100"]
    report = health.check_health(wal_settings, store=_Store([]), now=NOW, list_backups=unreachable, pg=_Pg(failing))
    assert _rules(report["findings"]) == [("s3_access", "critical"), ("wal", "critical")]
    assert "WAL archiving is failing" in report["findings"][1]["message"]
    assert report["wal"]["newest_segment"] is None and report["wal"]["failed_count"] == 4


def test_no_wal_rule_unless_the_host_archives(wal_settings, monkeypatch):
    settings = config.settings_from_env({"S3_BUCKET": "b", "DB_NAME": "app", "BACKUP_HOST_ID": "db1"})
    pg = _Pg(error=AssertionError("not asked"))
    report = _check(settings, _Store([]), pg)
    assert pg.sql == [] and report["wal"] is None
    assert not [item for item in report["findings"] if item["rule"] == "wal"]


def test_the_lag_limit_is_checked_as_a_setting():
    with pytest.raises(ConfigError, match="WAL_MAX_LAG_MINUTES"):
        config.settings_from_env({"S3_BUCKET": "b", "WAL_MAX_LAG_MINUTES": "0"})
