# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Health by the host's kind (BACKUP_KIND, the pg_backup role's pg_backup_kind): a physical-only host makes no dumps,
so the dump rules (no_backups, age, size, frequency) never judge it - its base and wal rules do, and only its point-
in-time drills count; dumps left from an earlier kind are an info finding. logical and both hosts are judged as
before."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime

import pytest

from ansible_collections.quankey.backup.plugins.module_utils import config
from ansible_collections.quankey.backup.plugins.module_utils.errors import ConfigError
from ansible_collections.quankey.backup.plugins.module_utils.workflows import backup, drill, health
from ansible_collections.quankey.backup.tests.unit.plugins.module_utils.workflows.fakes import ENV, FakePg
from ansible_collections.quankey.backup.tests.unit.plugins.module_utils.workflows.test_workflow_wal_prune import _base

UTC = datetime.timezone.utc
NOW = datetime.datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)
START = "000000010000000000000020"


def _settings(**more):
    values = dict(ENV)
    values.update(more)
    return config.settings_from_env(values)


def _rules(report):
    return sorted(set((item["rule"], item["severity"]) for item in report["findings"]))


def _fresh_base_and_wal(settings, store):
    _base(settings, store, NOW - datetime.timedelta(days=1), START)
    store.put_object("wal/db1/00000001/" + START, b"QKWL", last_modified=NOW - datetime.timedelta(minutes=5))


def test_a_physical_host_without_dumps_is_healthy_on_its_base_backups_and_wal(store):
    settings = _settings(BACKUP_KIND="physical")
    assert settings.archives_wal and not settings.makes_dumps  # physical implies WAL_ARCHIVING
    _fresh_base_and_wal(settings, store)
    report = health.check_health(settings, store=store, now=NOW)
    dump_rules = {"no_backups", "age", "min_size", "frequency", "missing_object", "size_drop"}
    assert not [rule for rule, _severity in _rules(report) if rule in dump_rules], report["findings"]
    assert report["status"] != "critical" and report["base"]["count"] == 1
    assert report["wal"]["newest_segment"] == START


def test_a_physical_host_is_still_critical_without_a_base_backup(store):
    report = health.check_health(_settings(BACKUP_KIND="physical"), store=store, now=NOW)
    assert ("base", "critical") in _rules(report) and ("no_backups", "critical") not in _rules(report)
    assert report["status"] == "critical"


def test_a_logical_or_both_host_without_dumps_is_critical_as_before(store):
    for kind in ("logical", "both"):
        settings = _settings(BACKUP_KIND=kind)
        _fresh_base_and_wal(settings, store)
        report = health.check_health(settings, store=store, now=NOW)
        assert ("no_backups", "critical") in _rules(report), kind
        assert (report["base"] is not None) == (kind == "both")


def test_dumps_left_from_an_earlier_kind_are_information_not_an_age_alarm(store, tmp_path):
    settings = _settings(BACKUP_KIND="physical")
    pg = FakePg(settings, str(tmp_path / "pg"))
    pg.add_database("app")
    old = backup.run_backup(settings, store=store, pg=pg, now=NOW - datetime.timedelta(days=10))
    _fresh_base_and_wal(settings, store)
    report = health.check_health(settings, store=store, now=NOW)
    (dumps,) = [item for item in report["findings"] if item["rule"] == "dumps"]
    assert dumps["severity"] == "info" and old["name"] in dumps["message"]
    assert "BACKUP_KIND is physical" in dumps["message"]
    assert ("age", "critical") not in _rules(report) and report["status"] != "critical"
    # no "latest backup" either: the monitor's quankey_backup_last_success_timestamp_seconds (QuankeyBackupTooOld)
    # would otherwise age with the old dump
    assert report["latest"] is None and report["backups"] == 1
    logical = health.check_health(_settings(BACKUP_KIND="logical"), store=store, now=NOW)
    assert ("age", "critical") in _rules(logical)  # the same bucket judged as a logical host's: its dumps stopped


def test_a_physical_host_counts_only_its_point_in_time_drills(store, monkeypatch):
    asked = []

    def latest(settings, store_, host, database, signing_keys):
        asked.append(database)
        return {"last": None, "last_passed": None, "untrusted": [], "reports": 0}
    monkeypatch.setattr(drill, "latest_drills", latest)
    health.check_health(_settings(BACKUP_KIND="physical"), store=store, now=NOW)
    health.check_health(_settings(BACKUP_KIND="both"), store=store, now=NOW)
    health.check_health(_settings(), store=store, now=NOW)
    assert asked == [drill.PITR_DATABASE, "app", drill.PITR_DATABASE, "app"]


def test_the_kind_is_checked_as_a_setting():
    assert _settings().backup_kind == "logical"
    with pytest.raises(ConfigError, match="BACKUP_KIND 'dumps' is not a backup kind: choose one of logical, physical"):
        _settings(BACKUP_KIND="dumps")
