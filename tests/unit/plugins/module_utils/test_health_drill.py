# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Health's drill rule on a host that archives its WAL (workflows/health.py drill_rule, combine_drills, _drills): its
point-in-time drills (database @cluster) count as drills beside its database's dump drills."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime

from ansible_collections.quankey.backup.plugins.module_utils import config
from ansible_collections.quankey.backup.plugins.module_utils.catalog import layout, trust
from ansible_collections.quankey.backup.plugins.module_utils.workflows import drill, health

UTC = datetime.timezone.utc
NOW = datetime.datetime(2026, 3, 10, 12, 0, 0, tzinfo=UTC)


def _report(started, result="passed", db="app"):
    return {"host": "db1", "database": db, "backup": "%s_backup" % db, "started": started, "result": result,
            "checks": [{"name": "recovery" if db == drill.PITR_DATABASE else "restore", "ok": result == "passed",
                        "detail": "broke" if result == "failed" else "fine"}],
            "error": None, "rto_seconds": 1.0, "rpo_seconds": 2.0,
            "report_key": layout.drill_key("", "db1", db, layout.parse_time(started))}


def _found(last=None, passed=None, untrusted=()):
    return {"last": last, "last_passed": passed, "untrusted": list(untrusted),
            "reports": len([item for item in (last, passed) if item]) + len(untrusted)}


NONE = _found()


def test_a_recent_passed_point_in_time_drill_counts_when_the_database_was_never_drilled():
    cluster = _report("2026-03-05T04:00:00Z", db=drill.PITR_DATABASE)
    last, findings = health.drill_rule([NONE, _found(cluster, cluster)], NOW, 35, explicit=True)
    assert findings == [] and last is cluster


def test_without_any_drill_an_explicit_age_still_warns():
    last, findings = health.drill_rule([NONE, NONE], NOW, 35, explicit=True)
    assert last is None and [severity for severity, _message in findings] == ["warning"]


def test_an_old_dump_drill_is_renewed_by_a_recent_point_in_time_drill_and_an_old_one_is_not():
    old_dump = _report("2026-01-01T04:00:00Z")
    recent_cluster = _report("2026-03-09T04:00:00Z", db=drill.PITR_DATABASE)
    assert health.drill_rule([_found(old_dump, old_dump), _found(recent_cluster, recent_cluster)], NOW, 35,
                             explicit=False)[1] == []
    old_cluster = _report("2026-01-02T04:00:00Z", db=drill.PITR_DATABASE)
    last, findings = health.drill_rule([_found(old_dump, old_dump), _found(old_cluster, old_cluster)], NOW, 35,
                                       explicit=False)
    [(severity, message)] = findings
    assert last is old_cluster and severity == "warning" and "@cluster_backup" in message and "67 days old" in message


def test_a_failed_point_in_time_drill_is_critical_even_after_a_passed_dump_drill():
    failed = _report("2026-03-08T04:00:00Z", result="failed", db=drill.PITR_DATABASE)
    passed = _report("2026-03-09T04:00:00Z")
    last, findings = health.drill_rule([_found(passed, passed), _found(failed)], NOW, 35, explicit=False)
    assert last is passed
    assert findings == [("critical", "the last restore drill (2026-03-08T04:00:00Z) of backup @cluster_backup failed: "
                                     "recovery: broke")]


def test_a_newer_failed_drill_of_either_kind_is_critical_once():
    failed = _report("2026-03-09T04:00:00Z", result="failed")
    cluster = _report("2026-03-08T04:00:00Z", db=drill.PITR_DATABASE)
    last, findings = health.drill_rule([_found(failed), _found(cluster, cluster)], NOW, 35, explicit=False)
    assert last is failed and [severity for severity, _message in findings] == ["critical"]
    assert "app_backup failed: restore: broke" in findings[0][1]


def test_untrusted_reports_of_both_series_are_said():
    forged = {"key": "k1", "outcome": trust.INVALID, "problem": "drill report k1 has an invalid signature"}
    unsigned = {"key": "k2", "outcome": trust.UNSIGNED, "problem": "drill report k2 is unsigned"}
    combined = health.combine_drills([_found(untrusted=[forged]), _found(untrusted=[unsigned])])
    assert combined == {"last": None, "last_passed": None, "untrusted": [forged, unsigned], "reports": 2}


def test_one_series_is_the_dump_rule_unchanged():
    passed = _report("2026-03-08T04:00:00Z")
    failed = _report("2026-03-09T04:00:00Z", result="failed")
    found = _found(failed, passed)
    assert health.drill_rule([found], NOW, 35, explicit=True) == (failed, drill.drill_findings(found, NOW, 35, True))


class _Listing:
    """A store whose listing is recorded: which report prefixes health reads."""

    def __init__(self):
        self.prefixes = []

    def list_objects(self, prefix):
        self.prefixes.append(prefix)
        return []


def test_health_reads_point_in_time_drills_only_where_wal_is_archived():
    for archiving, expected in (("false", ["drills/db1/app/"]), ("true", ["drills/db1/app/", "drills/db1/@cluster/"])):
        settings = config.settings_from_env({"DB_NAME": "app", "BACKUP_HOST_ID": "db1", "S3_BUCKET": "b",
                                             "WAL_ARCHIVING": archiving})
        store = _Listing()
        report = {}
        assert health._drills(settings, store, None, NOW, report) == []  # pylint: disable=protected-access
        assert store.prefixes == expected and report["drill"] is None
