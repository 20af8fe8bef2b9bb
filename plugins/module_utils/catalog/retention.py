# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Retention arithmetic: which backups ``prune`` keeps, and the rule(s) that keep each one.

Pure logic: no S3, no settings (workflows/prune.py passes the numbers and a judge). Per host and
database (a series), newest first, a backup is kept when any of these keeps it:

- age: it is no older than ``retention_days`` (``age <= 30 days``), good or not, as always;
- min_keep: it is one of the newest ``min_keep`` good backups (``min_keep 2 of 3``);
- daily, weekly, monthly, yearly (grandfather-father-son, as restic's and borg's ``--keep-*``): for a
  rule of N, the newest good backup of each of the N most recent periods (UTC days, ISO weeks, months,
  years) that have a good backup (``daily 2026-11-30``, ``weekly 2026-W48``, ``monthly 2026-11``,
  ``yearly 2026``). Periods without a good backup are skipped, not counted, and the periods are counted
  back from the newest good backup, not from now: a host whose backups stopped keeps its
  grandfathers.

Every other backup is deleted, unless it is locked: ``locked(record)`` (S3 Object Lock), asked only about the
backups no rule keeps, gives the time until which its objects may not be deleted, and a backup locked beyond
``now`` is kept (``locked until 2026-12-31T03:00:00Z``). Only good backups (``judge(record)`` is None) count for min_keep and
the calendar rules; the judge is asked lazily, once per backup at most, and only when a rule could
keep that backup (judging costs a read of its metadata). With every calendar rule 0 this is the
age-and-min_keep retention of before.

The same rules decide a host's physical base backups (one series per host). Its archived WAL follows them
(:func:`wal_plan`): a WAL file is deleted only when it comes before the start of every kept base backup, on the
same or an earlier timeline; timeline history files are never deleted.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime

from ..errors import ConfigError
from . import walnames

UTC = datetime.timezone.utc

# The calendar rules, shortest period first (their settings: BACKUP_KEEP_DAILY...).
CALENDAR_RULES = ("daily", "weekly", "monthly", "yearly")

KEEP, DELETE = "keep", "delete"


def _days(count):
    return "1 day" if count == 1 else "%d days" % count


def period(rule, when):
    """The period of ``rule`` an aware time falls in, in UTC: '2026-11-30', '2026-W48' (ISO week), '2026-11', '2026'."""
    when = when.astimezone(UTC)
    if rule == "daily":
        return when.strftime("%Y-%m-%d")
    if rule == "weekly":
        iso = when.isocalendar()
        return "%04d-W%02d" % (iso[0], iso[1])
    if rule == "monthly":
        return when.strftime("%Y-%m")
    if rule == "yearly":
        return "%04d" % when.year
    raise ValueError("no calendar rule %r: one of %s" % (rule, ", ".join(CALENDAR_RULES)))


class Policy:
    """The numbers of a retention: ``retention_days`` (>= 1), ``min_keep`` (>= 1) and each calendar rule's count
    (``daily``, ``weekly``, ``monthly``, ``yearly``; 0 = the rule is off)."""

    def __init__(self, retention_days, min_keep, daily=0, weekly=0, monthly=0, yearly=0):
        self.retention_days = retention_days
        self.min_keep = min_keep
        self.counts = {"daily": daily or 0, "weekly": weekly or 0, "monthly": monthly or 0, "yearly": yearly or 0}

    def __repr__(self):
        return "Policy(%s)" % ", ".join("%s=%s" % item for item in sorted(self.describe().items()))

    @property
    def calendar(self):
        """The calendar rules that are on, shortest period first: [(rule, count)]."""
        return [(rule, self.counts[rule]) for rule in CALENDAR_RULES if self.counts[rule] > 0]

    def describe(self):
        """JSON-ready: retention_days, min_keep, keep_daily, keep_weekly, keep_monthly, keep_yearly."""
        view = {"retention_days": self.retention_days, "min_keep": self.min_keep}
        view.update(("keep_" + rule, self.counts[rule]) for rule in CALENDAR_RULES)
        return view

    def words(self):
        """One line for humans: 'age <= 30 days, min_keep 3, daily 7, weekly 4' (rules that are off left out)."""
        parts = ["age <= %s" % _days(self.retention_days), "min_keep %d" % self.min_keep]
        parts += ["%s %d" % item for item in self.calendar]
        return ", ".join(parts)


class Fate:
    """What retention decided for one backup: ``keep`` (bool), ``rules`` (the words of each rule that keeps it,
    e.g. 'daily 2026-11-30'), ``good`` (True, False, or None when no rule needed to know) and ``problem`` (why it
    is not good, from the judge)."""

    def __init__(self, record):
        self.record = record
        self.rules = []
        self.good = None
        self.problem = None
        self.keep = False
        self.locked_until = None  # asked only when no rule keeps it: the time its objects' lock ends

    def __repr__(self):
        return "Fate(%s, %s, %s)" % (self.record.basename, self.fate, self.rules)

    @property
    def fate(self):
        """'keep' or 'delete'."""
        return KEEP if self.keep else DELETE

    def reason(self, policy):
        """Why, in words: the rules that keep it (and what is wrong with it, if it is not good), or why none does."""
        if self.keep:
            return ", ".join(self.rules) + ("" if self.good is not False else " (not good: %s)" % self.problem)
        why = "older than %s" % _days(policy.retention_days)
        if self.good is False:
            return "%s and not good (%s), so no other rule counts it" % (why, self.problem)
        return "%s and kept by no other rule" % why

    def summary(self, policy):
        """JSON-ready: name, host, database, timestamp, fate, rules, reason, good, problem and locked_until."""
        record = self.record
        return {"name": record.basename, "host": record.host, "database": record.db,
                "timestamp": record.timestamp.strftime("%Y-%m-%dT%H:%M:%SZ"), "fate": self.fate,
                "rules": list(self.rules), "reason": self.reason(policy), "good": self.good, "problem": self.problem,
                "locked_until": None if self.locked_until is None else utc_text(self.locked_until)}


def utc_text(when):
    """An aware time as '2026-12-31T03:00:00Z'."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def plan(records, now, policy, judge, locked=None):
    """The fate of each of ``records`` (newest first, as listed), in their order.

    ``judge(record)`` says whether a backup is good: None when it is, else the reason in a few words
    ('no data object', 'signature does not verify'); it is called at most once per backup, and only
    when min_keep or a calendar rule could keep it. ``locked(record)`` (None: nothing is locked) gives the
    aware time until which a backup's objects are locked (S3 Object Lock), or None; it is asked only about the
    backups no rule keeps, and one locked beyond ``now`` is kept ('locked until 2026-12-31T03:00:00Z').
    """
    cutoff = now - datetime.timedelta(days=policy.retention_days)
    fates = [Fate(record) for record in records]
    series = {}
    for fate in fates:
        series.setdefault((fate.record.host, fate.record.db), []).append(fate)
    age = "age <= %s" % _days(policy.retention_days)
    for members in series.values():
        _plan_series(members, policy, judge)
        for fate in members:
            if fate.record.timestamp >= cutoff:
                fate.rules.insert(0, age)
            if not fate.rules and locked is not None:
                fate.locked_until = locked(fate.record)
                if fate.locked_until is not None and fate.locked_until > now:
                    fate.rules.append("locked until %s" % utc_text(fate.locked_until))
            fate.keep = bool(fate.rules)
    return fates


def _plan_series(fates, policy, judge):
    """min_keep and the calendar rules over one host and database's backups, newest first."""
    kept_good = 0
    seen = dict((rule, set()) for rule, _count in policy.calendar)
    for fate in fates:
        when = fate.record.timestamp
        wanted = [(rule, period(rule, when)) for rule, count in policy.calendar
                  if len(seen[rule]) < count and period(rule, when) not in seen[rule]]
        if kept_good >= policy.min_keep and not wanted:
            continue
        fate.problem = judge(fate.record)
        fate.good = fate.problem is None
        if not fate.good:
            continue
        if kept_good < policy.min_keep:
            kept_good += 1
            fate.rules.append("min_keep %d of %d" % (kept_good, policy.min_keep))
        for rule, name in wanted:
            seen[rule].add(name)
            fate.rules.append("%s %s" % (rule, name))


# --------------------------------------------------------------------------- archived WAL (physical backups)

def wal_deletable(name, starts):
    """Whether prune may delete the archived WAL file ``name`` when the kept base backups start at the WAL files
    ``starts`` (their ``start_wal_file``, 24 hex digits each).

    A file is deleted only when no kept base backup can need it: for every start ``S`` on timeline ``T``, it is on
    ``T`` or an earlier timeline and comes before ``S`` in WAL order (its segment, ``.partial`` or ``.backup`` file
    named by a segment before ``S``'s). Timeline history files are never deleted (tiny, and every later timeline
    needs them); nothing is deleted without a start. ConfigError (catalog/walnames.py) for a name PostgreSQL does
    not archive: the caller leaves such an object alone."""
    wal = walnames.parse(name)
    if wal.kind == walnames.HISTORY or not starts:
        return False
    timeline, position = name[:8], name[8:24]  # fixed-width upper-case hex: text order is number order
    return all(timeline <= start[:8] and position < start[8:24] for start in starts)


def wal_plan(names, starts):
    """Prune's plan for a host's archived WAL: ``{"delete": [names, in WAL order], "keep": [names],
    "kept_from": the earliest of ``starts`` in WAL order (no file at or after it is deleted) or None}``.

    ``starts``: the ``start_wal_file`` of each kept base backup (:func:`wal_deletable`); none keeps everything. Names
    that are not WAL files PostgreSQL archives are kept (listed under ``keep``)."""
    starts = sorted(set(starts), key=lambda start: (start[8:24], start[:8]))
    delete, keep = [], []
    for name in names:
        try:
            deletable = wal_deletable(name, starts)
        except ConfigError:
            deletable = False
        (delete if deletable else keep).append(name)
    delete.sort(key=lambda name: (name[8:24], name[:8], name))
    return {"delete": delete, "keep": keep, "kept_from": starts[0] if starts else None}
