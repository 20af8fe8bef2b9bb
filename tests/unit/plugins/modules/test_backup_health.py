# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""backup_health: thresholds to the policy, fail_on, read-only results."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import pytest

from ansible_collections.quankey.backup.plugins.modules import backup_health as module

ARGS = {"db": "quankey_prod", "bucket": "backups", "host_id": "db1"}
AGE = {"rule": "age", "severity": "critical", "message": "latest backup x is 72.0 h old (limit 36 h): backups have stopped"}
SMALL = {"rule": "min_size", "severity": "warning", "message": "latest backup is 10 KiB, under the 1.0 MiB minimum"}


def _report(status, findings):
    return {"host": "db1", "database": "quankey_prod", "bucket": "backups", "checked_at": "2025-08-09T10:00:00Z",
            "latest": {"name": "x", "age_hours": 72.0}, "backups": 1, "status": status,
            "exit_code": {"ok": 0, "warning": 1, "critical": 2}[status], "findings": findings}


def _args(recorder):
    (settings, policy), kwargs = recorder.calls[0]
    assert kwargs == {}
    return settings, policy


def test_defaults_are_the_seed_rules(run_module, recorder, monkeypatch):
    check = recorder(result=_report("ok", []))
    monkeypatch.setattr(module.health, "check_health", check)
    result = run_module(module, ARGS)
    settings, policy = _args(check)
    assert (settings.db_name, settings.bucket, settings.host) == ("quankey_prod", "backups", "db1")
    assert settings.allow_seed is False  # the seed's unsigned backups are not counted unless asked
    assert (policy.max_age_hours, policy.min_size_bytes, policy.interval_hours, policy.window_days) == (36, 1048576, 24, 7)
    assert result["changed"] is False
    assert result["status"] == "ok" and result["findings"] == [] and result["latest"] == {"name": "x", "age_hours": 72.0}


def test_thresholds_and_schedule_reach_the_policy(run_module, recorder, monkeypatch):
    check = recorder(result=_report("ok", []))
    monkeypatch.setattr(module.health, "check_health", check)
    run_module(module, dict(ARGS, max_age_hours="8.5", min_size_bytes=10, schedule="6-hour", window_days=2))
    _settings, policy = _args(check)
    assert (policy.max_age_hours, policy.min_size_bytes, policy.interval_hours, policy.window_days) == (8.5, 10, 6, 2)


def test_schedule_in_hours_and_from_the_environment(run_module, recorder, monkeypatch):
    check = recorder(result=_report("ok", []))
    monkeypatch.setattr(module.health, "check_health", check)
    monkeypatch.setenv("BACKUP_SCHEDULE", "8")
    run_module(module, ARGS)
    assert _args(check)[1].interval_hours == 8


def test_an_unknown_schedule_fails_with_the_engine_message(run_module, recorder, monkeypatch):
    check = recorder(result=_report("ok", []))
    monkeypatch.setattr(module.health, "check_health", check)
    result = run_module(module, dict(ARGS, schedule="weekly"))
    assert result["failed"] is True
    assert result["msg"] == "the schedule option 'weekly' is not a preset (daily, 12-hour, 6-hour) or a number of hours"
    assert check.calls == []
    monkeypatch.setenv("BACKUP_SCHEDULE", "fortnightly")
    result = run_module(module, ARGS)
    assert result["msg"].startswith("BACKUP_SCHEDULE in the module's environment 'fortnightly' is not a preset")


@pytest.mark.parametrize("status, findings, fail_on, fails", [
    ("critical", [AGE], "critical", True),
    ("critical", [AGE], "warning", True),
    ("critical", [AGE], "never", False),
    ("warning", [SMALL], "critical", False),
    ("warning", [SMALL], "warning", True),
    ("ok", [], "warning", False),
])
def test_fail_on_decides_whether_the_task_fails(run_module, recorder, monkeypatch, status, findings, fail_on, fails):
    monkeypatch.setattr(module.health, "check_health", recorder(result=_report(status, findings)))
    result = run_module(module, dict(ARGS, fail_on=fail_on))
    assert result.get("failed", False) is fails
    assert result["status"] == status and result["findings"] == findings and result["changed"] is False


def test_a_failing_status_says_why(run_module, recorder, monkeypatch):
    monkeypatch.setattr(module.health, "check_health", recorder(result=_report("critical", [AGE, SMALL])))
    result = run_module(module, ARGS)
    assert result["msg"] == ("backups of quankey_prod on db1 are critical: latest backup x is 72.0 h old (limit 36 h): "
                             "backups have stopped; latest backup is 10 KiB, under the 1.0 MiB minimum")
    assert result["exit_code"] == 2


def test_check_mode_does_the_same_read_only_check(run_module, recorder, monkeypatch):
    check = recorder(result=_report("ok", []))
    monkeypatch.setattr(module.health, "check_health", check)
    result = run_module(module, ARGS, check_mode=True)
    assert len(check.calls) == 1
    assert result["changed"] is False and result["status"] == "ok"


def test_accepts_the_group_options_it_does_not_use(run_module, recorder, monkeypatch):
    """module_defaults for group/quankey.backup.all passes every shared option to every module."""
    monkeypatch.setattr(module.health, "check_health", recorder(result=_report("ok", [])))
    shared = dict(login_host="db", login_password="pw-secret", encryption_key="c2VjcmV0IGtleSBvZiB0aGUgdGVzdA==",
                  ssl_mode="require")
    result = run_module(module, dict(ARGS, **shared))
    assert result["status"] == "ok"


def test_allow_seed_counts_the_seeds_backups(run_module, recorder, monkeypatch):
    check = recorder(result=_report("ok", []))
    monkeypatch.setattr(module.health, "check_health", check)
    run_module(module, dict(ARGS, allow_seed=True))
    settings, _policy = _args(check)
    assert settings.allow_seed is True
    assert settings.label("allow_seed") == "the allow_seed option"


@pytest.mark.parametrize("value, expected", [("true", True), ("yes", True), ("1", True), ("false", False), ("no", False)])
def test_allow_seed_falls_back_to_backup_allow_seed(run_module, recorder, monkeypatch, value, expected):
    check = recorder(result=_report("ok", []))
    monkeypatch.setattr(module.health, "check_health", check)
    monkeypatch.setenv("BACKUP_ALLOW_SEED", value)
    run_module(module, ARGS)
    assert _args(check)[0].allow_seed is expected


def test_a_critical_finding_about_refused_metadata_fails_the_task(run_module, recorder, monkeypatch):
    refused = {"rule": "metadata", "severity": "critical",
               "message": "latest backup's metadata is unreadable or refused: metadata object m.meta has field(s) "
                          "'layout', which metadata version 1 does not define"}
    seed = {"rule": "seed_backups", "severity": "info", "message": "2 backup(s) made by the seed's scripts are not counted"}
    monkeypatch.setattr(module.health, "check_health", recorder(result=_report("critical", [refused, seed])))
    result = run_module(module, ARGS)
    assert result["failed"] is True
    assert "does not define" in result["msg"]
    assert "seed's scripts" not in result["msg"]  # info findings do not make the summary


@pytest.mark.parametrize("fail_on", ["never", "warning"])
def test_the_report_lines_are_the_engines_whether_or_not_the_task_fails(run_module, recorder, monkeypatch, fail_on):
    report = _report("warning", [SMALL])
    monkeypatch.setattr(module.health, "check_health", recorder(result=dict(report)))
    result = run_module(module, dict(ARGS, fail_on=fail_on))
    assert result.get("failed", False) is (fail_on == "warning")
    assert result["report_lines"] == module.health.report_lines(report)
    assert result["report_lines"][0] == "WARNING: backups of quankey_prod on db1 in s3://backups"
    assert "min_size" in result["report_lines"][-1]
