# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Restore drills' pure logic: row count comparison, reports (their place, fields and signature), the drill rule,
and what BACKUP_COUNT_ROWS adds to the metadata (workflows/drill.py, catalog/documents.py, catalog/layout.py)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import json
import os

import pytest

from ansible_collections.quankey.backup.plugins.module_utils import cli, config
from ansible_collections.quankey.backup.plugins.module_utils.catalog import dbnames, documents, layout, trust
from ansible_collections.quankey.backup.plugins.module_utils.errors import (AccessDeniedError, ConfigError, IntegrityError,
                                                                            StorageError)
from ansible_collections.quankey.backup.plugins.module_utils.formats import signing
from ansible_collections.quankey.backup.plugins.module_utils.workflows import drill, health

UTC = datetime.timezone.utc
NOW = datetime.datetime(2026, 3, 10, 12, 0, 0, tzinfo=UTC)
KEY = os.urandom(32)
KID = "qks-0123456789abcdef"


def _report(started="2026-03-10T04:00:00Z", result="passed", host="db1", db="app", prefix=""):
    when = layout.parse_time(started)
    report = {"report_type": drill.REPORT_TYPE, "report_version": drill.REPORT_VERSION, "host": host,
              "database": db, "backup": "app_backup_20260310_030000", "backup_timestamp": "2026-03-10T03:00:00Z",
              "started": started, "finished": started, "rto_seconds": 12.5, "rpo_seconds": 3600.0, "result": result,
              "checks": [{"name": "restore", "ok": result == "passed", "detail": "x"}], "tables": 3,
              "rows_checked": 10, "scratch_database": "quankey_drill_0a1b2c3d",
              "report_key": layout.drill_key(prefix, host, db, when), "error": None}
    return report


def _signed(report):
    return signing.sign_metadata(report, KID, KEY)


def _bytes(report):
    return drill.encode_report(report)


# --------------------------------------------------------------------------- keys

def test_drill_keys_are_per_host_and_database_and_read_back():
    when = datetime.datetime(2026, 3, 10, 4, 5, 6, tzinfo=UTC)
    key = layout.drill_key("prod/", "db1", "app", when)
    assert key == "prod/drills/db1/app/20260310_040506.json"
    assert layout.drill_key_parts("prod/", key) == ("db1", "app", when)
    assert layout.drill_prefix("prod/", "db1", "app") == "prod/drills/db1/app/"


@pytest.mark.parametrize("key", ["prod/drills/db1/app/x.json", "prod/drills/db1/20260310_040506.json",
                                 "prod/drills/db1/app/sub/20260310_040506.json", "other/drills/db1/app/20260310_040506.json",
                                 "prod/drills/db1/app/20260310_040506.json.bak"])
def test_keys_that_are_no_drill_report_are_not_read_as_one(key):
    assert layout.drill_key_parts("prod/", key) is None


# --------------------------------------------------------------------------- row counts

def test_row_counts_that_match_pass_and_say_how_many_rows():
    expected = {("public", "a"): 3, ("s", "b"): 0}
    assert drill.compare_row_counts(expected, {("public", "a"): 3, ("s", "b"): 0, ("public", "new"): 9}) == (
        True, "2 tables, 3 rows, as recorded at backup", 3)


def test_a_missing_table_or_a_different_count_fails_naming_each():
    ok, detail, rows = drill.compare_row_counts({("public", "a"): 3, ("public", "b"): 5, ("public", "c"): 1},
                                                {("public", "a"): 4, ("public", "c"): 1})
    assert not ok and rows == 5
    assert detail == ("2 of 3 tables differ from the counts recorded at backup: public.a has 4 rows, 3 recorded; "
                      "public.b is missing (5 rows recorded)")


def test_many_differences_are_shortened():
    expected = dict((("public", "t%02d" % number), 1) for number in range(8))
    ok, detail, _rows = drill.compare_row_counts(expected, {})
    assert not ok and detail.endswith("; and 3 more") and detail.count("is missing") == 5


# --------------------------------------------------------------------------- metadata

def _view():
    return {"db_name": "app", "retention_days": 30, "host": "db1", "storage_class": "STANDARD_IA", "compression": "gzip"}


def _metadata(row_counts=None):
    when = datetime.datetime(2026, 3, 10, 3, 0, 0, tzinfo=UTC)
    name = layout.backup_basename("app", when)
    return documents.build_metadata(
        _view(), basename=name, when=when, object_key=layout.object_key("", "db1", "app", name), size_bytes=10,
        checksum="0" * 64, envelope={"v": 1}, key_id="qk1-x", table_count=2, dump_bytes=9, duration=1.0,
        server_version="15.8", pg_dump_version="15.8", database_settings=None, encryption_name="aes-256-gcm",
        row_counts=row_counts)


def test_row_counts_make_metadata_version_6_and_without_them_it_stays_5():
    counted = _metadata([["s", "b", 2], ["public", "a", 1]])
    assert counted["metadata_version"] == 6 and counted["row_counts"] == [["public", "a", 1], ["s", "b", 2]]
    assert documents.row_counts_of(counted) == {("public", "a"): 1, ("s", "b"): 2}
    plain = _metadata()
    assert plain["metadata_version"] == 5 and "row_counts" not in plain and documents.row_counts_of(plain) is None
    for metadata in (counted, plain):
        assert documents.decode_metadata(documents.encode_metadata(metadata), "k") == metadata


@pytest.mark.parametrize("bad", [{"public.a": 1}, [["public", "a"]], [["public", "a", -1]], [["public", "a", True]],
                                 [["", "a", 1]], [["public", "a", 1], ["public", "a", 2]], [["public", "a", "1"]]])
def test_malformed_row_counts_are_refused(bad):
    metadata = dict(_metadata(), row_counts=bad, metadata_version=6)
    with pytest.raises(IntegrityError, match="invalid row_counts"):
        documents.decode_metadata(documents.encode_metadata(metadata), "k")


def test_the_settings_of_drills_and_row_counts():
    settings = config.settings_from_env({"DRILL_ASSERTIONS": '["SELECT true", " SELECT 1 = 1 "]',
                                         "BACKUP_COUNT_ROWS": "yes", "DRILL_MAX_AGE_DAYS": "7"})
    assert settings.drill_assertions == ["SELECT true", "SELECT 1 = 1"]
    assert settings.count_rows is True and settings.drill_max_age_days == 7
    default = config.settings_from_env({})
    assert (default.drill_assertions, default.count_rows, default.drill_max_age_days) == (None, False, None)


@pytest.mark.parametrize("value, message", [("SELECT true", "not valid JSON"), ('{"a": 1}', "must be a list"),
                                            ('["ok", ""]', "must be a list"), ("[1]", "must be a list")])
def test_assertions_that_are_no_list_of_sql_are_refused_naming_the_variable(value, message):
    with pytest.raises(ConfigError, match="DRILL_ASSERTIONS .*%s" % message):
        config.settings_from_env({"DRILL_ASSERTIONS": value})


# --------------------------------------------------------------------------- reports

def test_a_report_reads_back_where_it_was_stored():
    report = _signed(_report(prefix="p/"))
    assert drill.decode_report(_bytes(report), report["report_key"], "p/") == report
    assert drill.judge_report(report, {KID: KEY}) == (trust.VALID, None)
    assert drill.judge_report(report, None) == (trust.NOT_CHECKED, None)


def test_a_report_copied_to_another_place_is_refused():
    report = _signed(_report())
    for key in ("drills/db2/app/20260310_040000.json", "drills/db1/other/20260310_040000.json",
                "drills/db1/app/20990101_000000.json"):
        with pytest.raises(IntegrityError, match="is not this place's"):
            drill.decode_report(_bytes(report), key, "")


@pytest.mark.parametrize("change, message", [
    (lambda report: report.update(extra=1), "field\\(s\\) extra"),
    (lambda report: report.pop("rto_seconds"), "no rto_seconds"),
    (lambda report: report.update(report_type="quankey_backup"), "is not a drill report"),
    (lambda report: report.update(result="great"), "invalid result"),
    (lambda report: report.update(started="yesterday"), "not this place's"),
])
def test_a_report_with_fields_of_the_wrong_kind_is_refused(change, message):
    report = _report()
    change(report)
    with pytest.raises(IntegrityError, match=message):
        drill.decode_report(_bytes(report), "drills/db1/app/20260310_040000.json", "")


def test_metadata_is_no_report_and_garbage_is_refused():
    with pytest.raises(IntegrityError, match="is not a drill report"):
        drill.decode_report(documents.encode_metadata(_metadata()), "drills/db1/app/20260310_040000.json", "")
    with pytest.raises(IntegrityError, match="not valid JSON"):
        drill.decode_report(b"\xff{", "drills/db1/app/20260310_040000.json", "")


def test_forged_reports_are_not_believed_where_a_signing_key_is_held():
    report = _report()
    assert drill.judge_report(report, {KID: KEY})[0] == trust.UNSIGNED
    forged = dict(_signed(report), result="failed")
    outcome, problem = drill.judge_report(dict(_signed(report), result="passed", rto_seconds=1.0), {KID: KEY})
    assert outcome == trust.INVALID and "forged or modified" in problem
    assert drill.judge_report(forged, {KID: KEY})[0] == trust.INVALID
    other = signing.sign_metadata(report, "qks-ffffffffffffffff", os.urandom(32))
    assert drill.judge_report(other, {KID: KEY}) == (trust.UNKNOWN_KEY,
                                                     "is signed with key qks-ffffffffffffffff, not held here")


class _Reports:
    """A bucket holding reports (and whatever else), counting reads."""

    def __init__(self, objects):
        self.objects = dict(objects)
        self.reads = []

    def list_objects(self, prefix):
        return [{"key": key, "size": len(data)} for key, data in sorted(self.objects.items()) if key.startswith(prefix)]

    def get_bytes(self, key):
        self.reads.append(key)
        return self.objects[key]


def _settings():
    return config.settings_from_env({"DB_NAME": "app", "BACKUP_HOST_ID": "db1", "S3_BUCKET": "b"})


def test_the_newest_believed_reports_are_found_reading_no_further_than_the_newest_passed_one():
    old = _signed(_report("2026-03-01T04:00:00Z"))
    passed = _signed(_report("2026-03-08T04:00:00Z"))
    failed = _signed(_report("2026-03-09T04:00:00Z", result="failed"))
    forged = _report("2026-03-10T04:00:00Z")  # unsigned, newest
    store = _Reports((report["report_key"], _bytes(report)) for report in (old, passed, failed, forged))
    store.objects["drills/db1/app/notes.txt"] = b"x"
    store.objects["drills/db1/app2/20260310_050000.json"] = b"another database's"
    found = drill.latest_drills(_settings(), store, "db1", "app", {KID: KEY})
    assert found["last"] == failed and found["last_passed"] == passed and found["reports"] == 4
    assert [item["key"] for item in found["untrusted"]] == [forged["report_key"]]
    assert store.reads == [forged["report_key"], failed["report_key"], passed["report_key"]]
    assert drill.summary(found["last"]) == {"timestamp": "2026-03-09T04:00:00Z", "result": "failed",
                                            "backup": failed["backup"], "rto_seconds": 12.5, "rpo_seconds": 3600.0,
                                            "report_key": failed["report_key"]}


def test_without_a_signing_key_reports_are_taken_as_not_checked():
    unsigned = _report()
    found = drill.latest_drills(_settings(), _Reports({unsigned["report_key"]: _bytes(unsigned)}), "db1", "app", None)
    assert found["last"] == unsigned and found["untrusted"] == []


# --------------------------------------------------------------------------- the rule

def _found(last=None, passed=None, untrusted=(), reports=None):
    count = reports if reports is not None else len([item for item in (last, passed) if item]) + len(untrusted)
    return {"last": last, "last_passed": passed, "untrusted": list(untrusted), "reports": count}


def test_no_reports_and_no_explicit_age_is_no_finding():
    assert drill.drill_findings(_found(), NOW, 35, explicit=False) == []


def test_an_explicit_age_warns_when_no_drill_ever_passed():
    [(severity, message)] = drill.drill_findings(_found(), NOW, 35, explicit=True)
    assert severity == "warning" and message.startswith("no passed restore drill: run `quankey-backup drill`")


def test_a_recent_passed_drill_is_fine_and_an_old_one_is_a_warning():
    recent = _report("2026-03-01T04:00:00Z")
    assert drill.drill_findings(_found(recent, recent), NOW, 35, explicit=False) == []
    old = _report("2026-01-01T04:00:00Z")
    [(severity, message)] = drill.drill_findings(_found(old, old), NOW, 35, explicit=False)
    assert severity == "warning" and "is 68 days old (limit 35" in message


def test_a_failed_last_drill_is_critical_even_with_an_older_pass():
    failed = dict(_report("2026-03-09T04:00:00Z", result="failed"),
                  checks=[{"name": "assertion 1", "ok": False, "detail": "SELECT false: returned 'f'"}])
    passed = _report("2026-03-08T04:00:00Z")
    [(severity, message)] = drill.drill_findings(_found(failed, passed), NOW, 35, explicit=False)
    assert severity == "critical" and message.endswith("failed: assertion 1: SELECT false: returned 'f'")


def test_untrusted_reports_are_said_invalid_as_warnings_unsigned_as_info():
    passed = _report("2026-03-08T04:00:00Z")
    untrusted = [{"key": "k1", "outcome": trust.INVALID, "problem": "drill report k1 has an invalid signature"},
                 {"key": "k2", "outcome": trust.UNSIGNED, "problem": "drill report k2 is unsigned"}]
    assert drill.drill_findings(_found(passed, passed, untrusted), NOW, 35, explicit=False) == [
        ("warning", "drill report k1 has an invalid signature; it is not counted"),
        ("info", "drill report k2 is unsigned; it is not counted")]


def test_reports_that_exist_but_are_all_untrusted_warn_of_no_passed_drill():
    untrusted = [{"key": "k", "outcome": trust.UNSIGNED, "problem": "drill report k is unsigned"}]
    findings = drill.drill_findings(_found(untrusted=untrusted), NOW, 35, explicit=False)
    assert [severity for severity, _message in findings] == ["warning", "info"]
    assert "among the newest 8 reports" in findings[0][1]


def test_reports_are_canonical_json():
    report = _report()
    assert json.loads(drill.encode_report(report)) == report
    assert drill.encode_report(report).endswith(b"}\n")


def test_the_command_says_one_line_per_drill_and_each_failed_check():
    passed = dict(_report(), signed=True)
    failed = dict(_report(result="failed"), signed=False, rto_seconds=None, rows_checked=None, tables=None,
                  report_key=None, checks=[{"name": "signature", "ok": False, "detail": "metadata signature invalid"}])
    lines = cli.drill_lines({"status": "failed", "drills": [passed, failed]})
    assert lines == [
        "PASSED db1/app app_backup_20260310_030000: RTO 12.5s, RPO 1.0 h, 3 tables, 10 rows checked, 1 checks; "
        "report drills/db1/app/20260310_040000.json",
        "FAILED db1/app app_backup_20260310_030000: RTO -, RPO 1.0 h, - tables, 1 checks; report not stored (unsigned)",
        "  FAILED signature: metadata signature invalid"]
    assert cli.drill_lines({"status": "none", "drills": []}) == ["(no backups to drill)"]


class _Denied:
    def __init__(self, error):
        self.error = error

    def list_objects(self, prefix):
        raise self.error


@pytest.mark.parametrize("error, explicit, expected", [
    (AccessDeniedError("access denied to drills/"), False, []),
    (AccessDeniedError("access denied to drills/"), True, ["warning"]),
    (StorageError("endpoint down"), False, ["info"]),
    (StorageError("endpoint down"), True, ["warning"]),
])
def test_health_says_drill_reports_it_cannot_read_only_when_drills_are_asked_for(error, explicit, expected):
    """A database host's IAM policy reaches only its own backups: without DRILL_MAX_AGE_DAYS that is no finding."""
    env = {"DB_NAME": "app", "BACKUP_HOST_ID": "db1", "S3_BUCKET": "b"}
    if explicit:
        env["DRILL_MAX_AGE_DAYS"] = "30"
    report = {}
    findings = health._drills(config.settings_from_env(env), _Denied(error), None, NOW, report)  # pylint: disable=protected-access
    assert [item["severity"] for item in findings] == expected and report["drill"] is None
    assert all(item["rule"] == "drill" and "restore drill reports not read" in item["message"] for item in findings)


def test_stale_scratch_picks_only_drill_scratch_names_older_than_a_day_and_unused():
    def name(hours_ago, tail="0a0b"):
        return "quankey_drill__drill_%s_%s" % ((NOW - datetime.timedelta(hours=hours_ago)).strftime("%y%m%d%H%M%S"), tail)
    names = [(name(30), 0), (name(30, "1c1d"), 1), (name(2), 0), ("quankey_drill_0a1b2c3d", 0),
             ("app__restoring_%s_0a0b" % (NOW - datetime.timedelta(hours=30)).strftime("%y%m%d%H%M%S"), 0),
             ("quankey_drill__drill_991399999999_0a0b", 0)]
    assert drill.stale_scratch(names, NOW) == [name(30)]
    assert drill.stale_scratch(names, NOW, hours=1) == [name(30), name(2)]


def test_a_scratch_name_carries_its_age_and_fits_with_the_restores_staging_suffix():
    scratch = dbnames.side_name(drill.SCRATCH_TARGET, dbnames.DRILL_TAG, NOW)
    parsed = dbnames.parse_side_name(scratch)
    assert scratch.startswith(drill.SCRATCH_PREFIX) and parsed[:2] == (drill.SCRATCH_TARGET, dbnames.DRILL_TAG)
    assert parsed[2] == NOW
    staging = dbnames.side_name(scratch, dbnames.STAGING_TAG, NOW)
    assert len(staging.encode()) <= 63 and dbnames.parse_side_name(staging)[1] == dbnames.STAGING_TAG
