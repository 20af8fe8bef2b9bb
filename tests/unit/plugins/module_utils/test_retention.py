# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Retention arithmetic (catalog/retention.py): age, min_keep and the calendar rules, and their settings."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import random

import pytest

from ansible_collections.quankey.backup.plugins.module_utils import config
from ansible_collections.quankey.backup.plugins.module_utils.catalog import layout, retention
from ansible_collections.quankey.backup.plugins.module_utils.errors import ConfigError

UTC = datetime.timezone.utc


def _at(text):
    """'2026-11-30' (03:00 UTC) or '2026-11-30 17:45' as an aware UTC time."""
    if " " not in text:
        text += " 03:00"
    return datetime.datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=UTC)


def _record(when, host="db1", db="quankey_prod", size=1024):
    basename = layout.backup_basename("quankey", when)
    return layout.BackupRecord(host, db, basename, layout.metadata_key("", host, db, basename),
                               layout.object_key("", host, db, basename), object_size=size)


def _records(times, **kwargs):
    """Records of these times (texts or datetimes), newest first as the listing gives them."""
    records = [_record(_at(when) if isinstance(when, str) else when, **kwargs) for when in times]
    return sorted(records, key=lambda record: (record.timestamp, record.basename), reverse=True)


def _days(first, last, hour=3):
    """Every day from ``first`` to ``last`` (texts) at ``hour``:00 UTC."""
    day, end, out = _at(first).replace(hour=hour), _at(last).replace(hour=hour), []
    while day <= end:
        out.append(day)
        day += datetime.timedelta(days=1)
    return out


def _id(record):
    return (record.host, record.db, record.basename)


class Judge:
    """A judge that finds the backups of ``bad`` (names, or (host, db, name)) not good, and counts what it was asked."""

    def __init__(self, bad=()):
        self.bad = set(bad)
        self.asked = []

    def __call__(self, record):
        self.asked.append(_id(record))
        return "signature invalid" if record.basename in self.bad or _id(record) in self.bad else None


def _plan(records, now, bad=(), **numbers):
    numbers.setdefault("retention_days", 7)
    numbers.setdefault("min_keep", 1)
    policy = retention.Policy(**numbers)
    judge = Judge(bad)
    fates = retention.plan(records, _at(now) if isinstance(now, str) else now, policy, judge)
    assert len(judge.asked) == len(set(judge.asked)), "each backup is judged once at most"
    assert [fate.record for fate in fates] == records
    return fates, judge


def _kept(fates):
    """The kept backups' times, newest first, as 'YYYY-mm-dd' (or with the hour when it is not 03:00)."""
    return [_short(fate.record.timestamp) for fate in fates if fate.keep]


def _short(when):
    return when.strftime("%Y-%m-%d") if (when.hour, when.minute) == (3, 0) else when.strftime("%Y-%m-%d %H:%M")


def _rules(fates):
    return dict((_short(fate.record.timestamp), fate.rules) for fate in fates)


# --------------------------------------------------------------------------- periods

@pytest.mark.parametrize("rule, when, period", [
    ("daily", "2026-11-30 23:59", "2026-11-30"),
    ("daily", "2026-12-01 00:00", "2026-12-01"),
    ("weekly", "2026-11-30 00:00", "2026-W49"),  # a Monday opens its ISO week
    ("weekly", "2026-11-29 23:59", "2026-W48"),  # the Sunday before closes the previous one
    ("weekly", "2026-12-31", "2026-W53"),        # 2026 has 53 ISO weeks...
    ("weekly", "2027-01-03", "2026-W53"),        # ...whose last days are in 2027
    ("weekly", "2027-01-04", "2027-W01"),
    ("weekly", "2024-12-30", "2025-W01"),        # and 2025's first week starts in 2024
    ("weekly", "2021-01-03", "2020-W53"),
    ("monthly", "2026-02-28 23:59", "2026-02"),
    ("monthly", "2026-03-01 00:00", "2026-03"),
    ("yearly", "2026-12-31 23:59", "2026"),
    ("yearly", "2027-01-01 00:00", "2027"),
])
def test_periods_are_utc_days_iso_weeks_months_and_years(rule, when, period):
    assert retention.period(rule, _at(when)) == period


def test_periods_are_taken_in_utc_whatever_the_times_zone():
    berlin_morning = datetime.datetime(2026, 12, 1, 1, 30, tzinfo=datetime.timezone(datetime.timedelta(hours=2)))
    assert retention.period("daily", berlin_morning) == "2026-11-30"
    assert retention.period("monthly", berlin_morning) == "2026-11"
    with pytest.raises(ValueError, match="no calendar rule 'hourly'"):
        retention.period("hourly", berlin_morning)


# --------------------------------------------------------------------------- age and min_keep (as before)

def test_age_keeps_everything_younger_than_retention_days_good_or_not():
    records = _records(_days("2025-08-01", "2025-08-20"))
    fates, _judge = _plan(records, "2025-08-20 12:00", bad=[records[0].basename], retention_days=7, min_keep=3)
    assert _kept(fates) == ["2025-08-%02d" % day for day in range(20, 13, -1)]  # 14 to 20: after Aug 13 12:00
    newest = fates[0]
    assert newest.keep and newest.good is False and newest.rules == ["age <= 7 days"]
    assert newest.reason(retention.Policy(7, 3)) == "age <= 7 days (not good: signature invalid)"
    assert fates[1].rules == ["age <= 7 days", "min_keep 1 of 3"]


def test_min_keep_keeps_the_newest_good_backups_of_a_stopped_host():
    records = _records(_days("2025-08-01", "2025-08-05"))
    fates, _judge = _plan(records, "2025-08-30", retention_days=7, min_keep=3)
    assert _kept(fates) == ["2025-08-05", "2025-08-04", "2025-08-03"]
    assert [fate.rules for fate in fates[:3]] == [["min_keep 1 of 3"], ["min_keep 2 of 3"], ["min_keep 3 of 3"]]
    assert [fate.fate for fate in fates] == ["keep"] * 3 + ["delete"] * 2


def test_bad_backups_do_not_count_for_min_keep():
    records = _records(_days("2025-08-01", "2025-08-05"))
    bad = [records[0].basename, records[1].basename]
    fates, _judge = _plan(records, "2025-08-30", bad=bad, retention_days=7, min_keep=3)
    assert _kept(fates) == ["2025-08-03", "2025-08-02", "2025-08-01"]
    assert fates[0].reason(retention.Policy(7, 3)) == \
        "older than 7 days and not good (signature invalid), so no other rule counts it"


def test_min_keep_and_calendar_rules_count_per_host_and_database():
    records = sorted(_records(_days("2025-08-01", "2025-08-03"), host="a")
                     + _records(_days("2025-08-01", "2025-08-03"), host="b")
                     + _records(_days("2025-08-01", "2025-08-03"), host="a", db="other"),
                     key=lambda record: record.timestamp, reverse=True)
    fates, _judge = _plan(records, "2025-08-30", retention_days=7, min_keep=1, daily=2)
    kept = sorted((fate.record.host, fate.record.db, _short(fate.record.timestamp)) for fate in fates if fate.keep)
    assert kept == [("a", "other", "2025-08-02"), ("a", "other", "2025-08-03"),
                    ("a", "quankey_prod", "2025-08-02"), ("a", "quankey_prod", "2025-08-03"),
                    ("b", "quankey_prod", "2025-08-02"), ("b", "quankey_prod", "2025-08-03")]


def _before(records, now, retention_days, min_keep, is_good):
    """The retention of before the calendar rules (layout.retention_plan until issue 16), word for word."""
    cutoff = now - datetime.timedelta(days=retention_days)
    protected = set()
    good_per_series = {}
    for record in records:
        series = (record.host, record.db)
        if good_per_series.get(series, 0) < min_keep and is_good(record):
            good_per_series[series] = good_per_series.get(series, 0) + 1
            protected.add(id(record))
    keep, delete = [], []
    for record in records:
        if record.timestamp >= cutoff or id(record) in protected:
            keep.append(record)
        else:
            delete.append(record)
    return keep, delete


@pytest.mark.parametrize("seed", range(40))
def test_with_every_calendar_rule_0_retention_is_what_it_was(seed):
    draw = random.Random(seed)
    start = _at("2025-01-01")
    times = sorted(set(start + datetime.timedelta(hours=draw.randint(0, 24 * 120))
                       for _draw in range(draw.randint(0, 60))))
    records = sorted(_records(times, host=draw.choice(["a", "b"])) + _records(times[:5], host="c"),
                     key=lambda record: (record.timestamp, record.basename), reverse=True)
    bad = set(_id(record) for record in records if draw.random() < 0.3)
    now = start + datetime.timedelta(days=draw.randint(0, 150))
    retention_days, min_keep = draw.randint(1, 40), draw.randint(1, 8)
    before_asked = []

    def is_good(record):
        before_asked.append(_id(record))
        return _id(record) not in bad

    keep, delete = _before(records, now, retention_days, min_keep, is_good)
    fates, judge = _plan(records, now, bad=bad, retention_days=retention_days, min_keep=min_keep)
    assert [fate.record for fate in fates if fate.keep] == keep
    assert [fate.record for fate in fates if not fate.keep] == delete
    # judged lazily, as before: only until min_keep good ones of each series were found
    assert sorted(judge.asked) == sorted(before_asked)
    assert all(fate.good is None for fate in fates if _id(fate.record) not in before_asked)


# --------------------------------------------------------------------------- the calendar rules

def test_daily_keeps_the_newest_good_backup_of_each_day():
    times = ["2026-11-28 03:00", "2026-11-28 15:00", "2026-11-29 03:00", "2026-11-29 09:00", "2026-11-29 21:00",
             "2026-11-30 03:00", "2026-11-30 15:00"]
    fates, _judge = _plan(_records(times), "2026-12-30", daily=3)
    assert _kept(fates) == ["2026-11-30 15:00", "2026-11-29 21:00", "2026-11-28 15:00"]
    assert _rules(fates)["2026-11-30 15:00"] == ["min_keep 1 of 1", "daily 2026-11-30"]
    assert _rules(fates)["2026-11-28 15:00"] == ["daily 2026-11-28"]


def test_days_without_a_good_backup_are_skipped_not_counted():
    records = _records(["2026-11-01", "2026-11-02", "2026-11-05", "2026-11-09", "2026-11-10 03:00", "2026-11-10 15:00"])
    bad = [record.basename for record in records if record.timestamp.day in (9, 10)]  # the 9th's and both of the 10th
    fates, _judge = _plan(records, "2026-12-30", bad=bad, daily=3)
    assert _kept(fates) == ["2026-11-05", "2026-11-02", "2026-11-01"]
    assert _rules(fates)["2026-11-05"] == ["min_keep 1 of 1", "daily 2026-11-05"]


def test_a_bad_newest_backup_of_a_period_gives_its_place_to_the_next_good_one_of_that_period():
    records = _records(["2026-10-30", "2026-10-31 03:00", "2026-10-31 15:00", "2026-11-30"])
    bad = [records[1].basename, records[2].basename]  # the two of Oct 31
    fates, _judge = _plan(records, "2027-06-01", bad=bad, monthly=2)
    assert _kept(fates) == ["2026-11-30", "2026-10-30"]
    assert _rules(fates)["2026-10-30"] == ["monthly 2026-10"]
    assert [fate.good for fate in fates] == [True, False, False, True]


def test_weekly_counts_iso_weeks_across_the_year_and_week_53():
    records = _records(_days("2026-12-14", "2027-01-12"))
    fates, _judge = _plan(records, "2027-01-12 12:00", retention_days=1, weekly=4)
    # 2027-W02 (Jan 11-12), 2027-W01 (Jan 4-10), 2026-W53 (Dec 28 - Jan 3), 2026-W52 (Dec 21-27)
    assert _kept(fates) == ["2027-01-12", "2027-01-10", "2027-01-03", "2026-12-27"]
    assert _rules(fates)["2027-01-03"] == ["weekly 2026-W53"]
    assert _rules(fates)["2027-01-12"] == ["age <= 1 day", "min_keep 1 of 1", "weekly 2027-W02"]


def test_monthly_and_yearly_cross_the_year_boundary():
    records = _records(["2025-11-30", "2025-12-31 23:59", "2026-01-01 00:00", "2026-01-31", "2026-02-01"])
    fates, _judge = _plan(records, "2027-06-01", monthly=3, yearly=2)
    assert _kept(fates) == ["2026-02-01", "2026-01-31", "2025-12-31 23:59"]
    rules = _rules(fates)
    assert rules["2026-02-01"] == ["min_keep 1 of 1", "monthly 2026-02", "yearly 2026"]
    assert rules["2025-12-31 23:59"] == ["monthly 2025-12", "yearly 2025"]
    assert rules["2026-01-01 00:00"] == [] and rules["2025-11-30"] == []


def test_a_year_of_daily_backups_keeps_the_grandfathers_fathers_and_sons():
    records = _records(_days("2026-01-01", "2026-11-30"))
    fates, judge = _plan(records, "2026-11-30 12:00", retention_days=7, min_keep=3, daily=7, weekly=4, monthly=12,
                         yearly=2)
    assert _kept(fates) == ["2026-11-%02d" % day for day in range(30, 23, -1)] + [
        "2026-11-22", "2026-11-15",  # weekly: W49 is Nov 30, W48 ends Sunday Nov 29, W47 Nov 22, W46 Nov 15
        "2026-10-31", "2026-09-30", "2026-08-31", "2026-07-31", "2026-06-30", "2026-05-31", "2026-04-30",
        "2026-03-31", "2026-02-28", "2026-01-31"]  # monthly: 11 months have backups, all kept
    rules = _rules(fates)
    assert rules["2026-11-30"] == ["age <= 7 days", "min_keep 1 of 3", "daily 2026-11-30", "weekly 2026-W49",
                                   "monthly 2026-11", "yearly 2026"]
    assert rules["2026-11-29"] == ["age <= 7 days", "min_keep 2 of 3", "daily 2026-11-29", "weekly 2026-W48"]
    assert rules["2026-11-24"] == ["age <= 7 days", "daily 2026-11-24"]
    assert rules["2026-02-28"] == ["monthly 2026-02"]
    assert rules["2026-01-01"] == [] and not fates[-1].keep
    assert fates[-1].reason(retention.Policy(7, 3)) == "older than 7 days and kept by no other rule"
    assert len(judge.asked) < len(records), "backups no rule could keep are not judged"


def test_the_rules_count_back_from_the_newest_good_backup_not_from_now():
    records = _records(_days("2025-12-20", "2026-01-05"))
    fates, _judge = _plan(records, "2027-11-30", retention_days=30, min_keep=1, daily=2, weekly=2, monthly=2, yearly=2)
    assert _kept(fates) == ["2026-01-05", "2026-01-04", "2025-12-31"]  # all past age, two years after the last one
    rules = _rules(fates)
    assert rules["2026-01-05"] == ["min_keep 1 of 1", "daily 2026-01-05", "weekly 2026-W02", "monthly 2026-01",
                                   "yearly 2026"]
    assert rules["2026-01-04"] == ["daily 2026-01-04", "weekly 2026-W01"]  # ISO 2026-W01 is Dec 29 to Jan 4
    assert rules["2025-12-31"] == ["monthly 2025-12", "yearly 2025"]
    assert rules["2026-01-03"] == [] and rules["2025-12-30"] == []


def test_min_keep_larger_than_the_rules_still_keeps_min_keep_good_backups():
    records = _records(_days("2026-01-01", "2026-01-20"))
    bad = [records[3].basename]
    fates, _judge = _plan(records, "2026-06-01", bad=bad, retention_days=7, min_keep=10, daily=2, monthly=1)
    assert len(_kept(fates)) == 10
    assert _kept(fates) == ["2026-01-%02d" % day for day in (20, 19, 18, 16, 15, 14, 13, 12, 11, 10)]
    assert _rules(fates)["2026-01-20"] == ["min_keep 1 of 10", "daily 2026-01-20", "monthly 2026-01"]
    assert _rules(fates)["2026-01-17"] == []


def test_only_good_backups_count_and_bad_ones_are_deleted_once_old():
    records = _records(_days("2026-01-01", "2026-03-31"))
    bad = [record.basename for record in records if record.timestamp.month == 2]  # all of February
    fates, _judge = _plan(records, "2026-12-01", bad=bad, monthly=3)
    assert _kept(fates) == ["2026-03-31", "2026-01-31"]  # February has no good backup: it is skipped
    assert all(not fate.keep for fate in fates if fate.record.timestamp.month == 2)


def test_the_judge_is_asked_only_what_a_rule_needs():
    records = _records(_days("2026-01-01", "2026-01-31"))
    _fates, judge = _plan(records, "2026-01-31 12:00", retention_days=40, min_keep=1)
    assert judge.asked == [_id(records[0])]  # every backup is kept by age; min_keep needs the newest good one
    _fates, judge = _plan(records, "2026-06-01", min_keep=1, weekly=2)
    assert judge.asked == [_id(records[0]), _id(records[6])]  # Jan 31 (Sat, W05) and Jan 25 (Sun, W04)


def test_summary_and_words():
    records = _records(["2026-11-29", "2026-11-30"])
    policy = retention.Policy(30, 3, daily=7, weekly=0, monthly=12)
    fates = retention.plan(records, _at("2026-11-30 12:00"), policy, lambda record: None)
    summary = fates[0].summary(policy)
    assert summary == {"name": "quankey_backup_20261130_030000", "host": "db1", "database": "quankey_prod",
                       "timestamp": "2026-11-30T03:00:00Z", "fate": "keep",
                       "rules": ["age <= 30 days", "min_keep 1 of 3", "daily 2026-11-30", "monthly 2026-11"],
                       "reason": "age <= 30 days, min_keep 1 of 3, daily 2026-11-30, monthly 2026-11",
                       "good": True, "problem": None, "locked_until": None}
    assert policy.words() == "age <= 30 days, min_keep 3, daily 7, monthly 12"
    assert policy.describe() == {"retention_days": 30, "min_keep": 3, "keep_daily": 7, "keep_weekly": 0,
                                 "keep_monthly": 12, "keep_yearly": 0}
    assert retention.plan([], _at("2026-11-30"), policy, lambda record: None) == []


# --------------------------------------------------------------------------- the settings

def test_the_calendar_settings_default_to_off_and_read_whole_numbers():
    settings = config.settings_from_env({})
    assert (settings.keep_daily, settings.keep_weekly, settings.keep_monthly, settings.keep_yearly) == (0, 0, 0, 0)
    settings = config.settings_from_env({"BACKUP_KEEP_DAILY": "7", "BACKUP_KEEP_WEEKLY": " 4 ", "BACKUP_KEEP_MONTHLY": "12",
                                         "BACKUP_KEEP_YEARLY": "0"})
    assert (settings.keep_daily, settings.keep_weekly, settings.keep_monthly, settings.keep_yearly) == (7, 4, 12, 0)
    assert config.Settings(keep_yearly=3).keep_yearly == 3


@pytest.mark.parametrize("variable, value, problem", [
    ("BACKUP_KEEP_DAILY", "-1", "must be between 0 and 100000, got -1"),
    ("BACKUP_KEEP_WEEKLY", "four", "must be a whole number, got 'four'"),
    ("BACKUP_KEEP_MONTHLY", "1.5", "must be a whole number, got '1.5'"),
    ("BACKUP_KEEP_YEARLY", "100001", "must be between 0 and 100000, got 100001"),
])
def test_a_wrong_calendar_setting_names_itself_and_the_fix(variable, value, problem):
    periods = {"BACKUP_KEEP_DAILY": "days", "BACKUP_KEEP_WEEKLY": "ISO weeks", "BACKUP_KEEP_MONTHLY": "months",
               "BACKUP_KEEP_YEARLY": "years"}[variable]
    with pytest.raises(ConfigError) as caught:
        config.settings_from_env({variable: value}, origin="/etc/quankey/backup.env")
    assert str(caught.value) == ("%s in /etc/quankey/backup.env %s: give how many of the most recent %s (UTC) keep "
                                 "their newest good backup, a whole number from 0 (the rule off) to 100000"
                                 % (variable, problem, periods))


def test_a_wrong_calendar_option_names_the_option():
    vocabulary = config.Vocabulary(options=True)
    with pytest.raises(ConfigError, match=r"^the keep_monthly option must be between 0 and 100000, got -3: give how many"):
        config.Settings(keep_monthly=-3, vocabulary=vocabulary)


class _Locks:
    """``locked(record)`` of retention.plan: a lock end per backup name, and the names asked."""

    def __init__(self, until):
        self.until = until
        self.asked = []

    def __call__(self, record):
        self.asked.append(record.basename)
        return self.until.get(record.basename)


def test_a_locked_backup_no_rule_keeps_is_kept_until_its_lock_ends_and_only_those_are_asked():
    records = _records(["2026-01-01", "2026-01-02", "2026-01-03", "2026-11-30"])
    names = [record.basename for record in records]  # newest first
    policy = retention.Policy(30, 1)
    locks = _Locks({names[2]: _at("2026-12-05 00:00"), names[3]: _at("2026-11-30 11:00")})
    fates = retention.plan(records, _at("2026-11-30 12:00"), policy, lambda record: None, locked=locks)
    assert [fate.fate for fate in fates] == ["keep", "delete", "keep", "delete"]
    assert fates[2].rules == ["locked until 2026-12-05T00:00:00Z"]
    assert fates[2].summary(policy)["locked_until"] == "2026-12-05T00:00:00Z"
    assert fates[2].reason(policy) == "locked until 2026-12-05T00:00:00Z"
    assert fates[3].summary(policy)["locked_until"] == "2026-11-30T11:00:00Z"  # a lock that ended keeps nothing
    assert fates[3].reason(policy) == "older than 30 days and kept by no other rule"
    assert locks.asked == names[1:]  # the newest is kept by age and min_keep: its lock is never read
