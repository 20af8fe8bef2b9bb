# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""backup_drill: options to run_drill, check mode to the plan, a failed drill fails the task, the table, changed."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.quankey.backup.plugins.module_utils.errors import NotFoundError
from ansible_collections.quankey.backup.plugins.modules import backup_drill as module

ARGS = {"bucket": "backups", "login_password": "pw", "encryption_key": "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="}


def _report(host, db, result, error=None, report_key="drills/x.json"):
    return {"host": host, "database": db, "backup": "%s_backup_20250809_030000" % db,
            "backup_timestamp": "2025-08-09T03:00:00Z", "started": "2025-08-10T05:00:00Z",
            "finished": "2025-08-10T05:00:21Z", "rto_seconds": 21.4, "rpo_seconds": 93600.0, "result": result,
            "checks": [{"name": "table_count", "ok": result == "passed", "detail": "3 tables"}], "tables": 3,
            "rows_checked": 3, "scratch_database": "quankey_drill_0a1b2c3d", "report_key": report_key, "error": error}


def test_fleet_mode_runs_every_drill_and_returns_the_table(run_module, recorder, monkeypatch):
    drills = [_report("db1", "app", "passed"), _report("db2", "shop", "passed")]
    run = recorder(result={"status": "passed", "drills": drills})
    monkeypatch.setattr(module.drill, "run_drill", run)
    result = run_module(module, dict(ARGS, all_hosts=True, assertions=["select true"]))
    assert run.kwargs == {"host": None, "all_hosts": True, "assertions": ("select true",)}
    assert run.settings.bucket == "backups"
    assert result["changed"] is True  # the reports were stored
    assert result["status"] == "passed" and result["drills"] == drills
    assert result["table"][0].split() == ["HOST", "DATABASE", "BACKUP", "AGE", "RTO", "RESULT"]
    assert result["table"][1].split() == ["db1", "app", "app_backup_20250809_030000", "26h", "00m", "21s", "passed"]
    assert len(set(len(line.split("passed")[0]) for line in result["table"][1:])) == 1  # the columns line up


def test_one_host_and_database(run_module, recorder, monkeypatch):
    run = recorder(result={"status": "passed", "drills": [_report("db1", "app", "passed")]})
    monkeypatch.setattr(module.drill, "run_drill", run)
    run_module(module, dict(ARGS, host="db1", db="app"))
    assert run.kwargs == {"host": "db1", "all_hosts": False, "assertions": ()}
    assert run.settings.db_name == "app"


def test_a_failed_drill_fails_the_task_with_every_report_and_the_table(run_module, recorder, monkeypatch):
    drills = [_report("db1", "app", "passed"), _report("db2", "shop", "failed", error="table count 2, expected 3")]
    monkeypatch.setattr(module.drill, "run_drill", recorder(result={"status": "failed", "drills": drills}))
    result = run_module(module, dict(ARGS, all_hosts=True))
    assert result["failed"] is True and result["changed"] is True
    assert result["msg"] == ("1 of 2 restore drill(s) failed: db2/shop shop_backup_20250809_030000: table count 2, "
                             "expected 3")
    assert result["drills"] == drills and result["status"] == "failed"
    assert result["table"][2].endswith("failed: table count 2, expected 3")


def test_a_failed_check_is_named_when_there_is_no_error(run_module, recorder, monkeypatch):
    drills = [_report("db1", "app", "failed")]
    drills[0]["checks"].append({"name": "assertion 1", "ok": False, "detail": "returned false: select false"})
    monkeypatch.setattr(module.drill, "run_drill", recorder(result={"status": "failed", "drills": drills}))
    result = run_module(module, dict(ARGS, all_hosts=True))
    assert result["msg"] == ("1 of 1 restore drill(s) failed: db1/app app_backup_20250809_030000: table_count: 3 tables; "
                             "assertion 1: returned false: select false")


def test_a_report_that_could_not_be_stored_is_no_change(run_module, recorder, monkeypatch):
    drills = [_report("db1", "app", "passed", report_key=None)]
    monkeypatch.setattr(module.drill, "run_drill", recorder(result={"status": "passed", "drills": drills}))
    assert run_module(module, dict(ARGS, all_hosts=True))["changed"] is False


def test_nothing_to_drill_is_no_failure(run_module, recorder, monkeypatch):
    monkeypatch.setattr(module.drill, "run_drill", recorder(result={"status": "none", "drills": []}))
    result = run_module(module, dict(ARGS, all_hosts=True))
    assert result.get("failed") is not True and result["changed"] is False
    assert result["status"] == "none" and result["table"] == ["HOST  DATABASE  BACKUP  AGE  RTO  RESULT"]


def test_check_mode_plans_and_drills_nothing(run_module, recorder, monkeypatch):
    plan = [{"host": "db1", "database": "app", "backup": "app_backup_20250809_030000",
             "backup_timestamp": "2025-08-09T03:00:00Z", "rpo_seconds": 3600.0}]
    planner, run = recorder(result=plan), recorder(error=AssertionError("check mode must not drill"))
    monkeypatch.setattr(module.drill, "plan_drill", planner)
    monkeypatch.setattr(module.drill, "run_drill", run)
    result = run_module(module, dict(ARGS, all_hosts=True), check_mode=True)
    assert run.calls == [] and planner.kwargs == {"host": None, "all_hosts": True}
    assert result["changed"] is False and result["status"] == "none" and result["drills"] == []
    assert result["plan"] == plan
    assert result["table"][1].split() == ["db1", "app", "app_backup_20250809_030000", "1h", "00m", "-", "-"]


def test_host_and_all_hosts_contradict(run_module, recorder, monkeypatch):
    run = recorder(result={"status": "none", "drills": []})
    monkeypatch.setattr(module.drill, "run_drill", run)
    result = run_module(module, dict(ARGS, host="db1", all_hosts=True))
    assert result["failed"] is True and "contradict" in result["msg"]
    assert run.calls == []


def test_an_engine_error_fails_with_its_words_and_exit_code(run_module, recorder, monkeypatch):
    monkeypatch.setattr(module.drill, "run_drill", recorder(error=NotFoundError("no backup of app on host db1 to drill")))
    result = run_module(module, dict(ARGS, host="db1", db="app"))
    assert result["failed"] is True and result["msg"] == "no backup of app on host db1 to drill"
    assert result["error"]["type"] == "NotFoundError" and result["error"]["exit_code"] == NotFoundError.exit_code
    assert "pw" not in str(result)
