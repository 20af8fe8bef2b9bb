# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""s3_backup_restore with pitr: true and backup_drill with pitr: true - the options reach workflows/pitr.py and
workflows/drill.py as the command's do, check mode plans, options of the other kind of restore are refused, and the
engine's errors name the module's options. Real recoveries: tests/functional/test_pitr_playbooks.py."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime

import pytest

from ansible_collections.quankey.backup.plugins.module_utils.errors import RefusedError
from ansible_collections.quankey.backup.plugins.modules import backup_drill
from ansible_collections.quankey.backup.plugins.modules import s3_backup_restore as module

KEY = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
ARGS = {"bucket": "backups", "encryption_key": KEY, "host_id": "db1", "pitr": True, "data_dir": "/srv/restored"}
RESULT = {"kind": "pitr", "base_backup": "db1_base_20250809_020000", "reached": {"state": "promoted"}}


def test_pitr_reaches_run_restore_pitr_with_the_target_and_returns_pitr(run_module, recorder, monkeypatch):
    run = recorder(result=RESULT)
    monkeypatch.setattr(module.pitr, "run_restore_pitr", run)
    result = run_module(module, dict(ARGS, target_time="2025-08-09T14:29:00+02:00", target_exclusive=True,
                                     target_action="pause", os_user="pg", config_file="/etc/pg.conf", archive=False,
                                     timeout=60, source_host="db2", backup="db2_base_20250809_020000"))
    assert result["changed"] is True and result["pitr"] == RESULT and "restore" not in result
    assert run.calls[0][0][1] == "/srv/restored"
    target = run.kwargs.pop("target")
    assert (target.kind, target.value, target.inclusive, target.timeline) == (
        "time", datetime.datetime(2025, 8, 9, 12, 29, tzinfo=datetime.timezone.utc), False, "latest")
    assert run.kwargs == {"backup": "db2_base_20250809_020000", "host": "db2", "action": "pause", "os_user": "pg",
                          "allow_unsigned": False, "archive": False, "timeout": 60, "config_file": "/etc/pg.conf"}


def test_check_mode_plans_and_restores_nothing(run_module, recorder, monkeypatch):
    plan = recorder(result={"base_backup": "db1_base_20250809_020000", "data_dir_state": "empty"})
    run = recorder(result=RESULT)
    monkeypatch.setattr(module.pitr, "plan_restore_pitr", plan)
    monkeypatch.setattr(module.pitr, "run_restore_pitr", run)
    result = run_module(module, dict(ARGS, target_lsn="0/16b3748"), check_mode=True)
    assert result["pitr"] == {"base_backup": "db1_base_20250809_020000", "data_dir_state": "empty"}
    assert run.calls == [] and plan.kwargs["target"].summary()["value"] == "0/16B3748"
    assert plan.kwargs["backup"] is None  # latest: the newest that reaches the target


@pytest.mark.parametrize("args, words", [
    (dict(ARGS, target_db="x", force=True), "target_db, force belong to a database's restore from a dump"),
    ({"bucket": "b", "encryption_key": KEY, "db": "app", "data_dir": "/srv/x"}, "data_dir belongs to point-in-time "
                                                                                "recovery: add pitr=true"),
    (dict(ARGS, target_time="2025-08-09", target_name="x"), "parameters are mutually exclusive: target_time|target_lsn|"),
    ({"bucket": "b", "encryption_key": KEY, "pitr": True}, "pitr is True but all of the following are missing: data_dir"),
])
def test_options_that_do_not_fit_fail_before_the_engine(run_module, recorder, monkeypatch, args, words):
    run = recorder(result=RESULT)
    monkeypatch.setattr(module.pitr, "run_restore_pitr", run)
    monkeypatch.setattr(module.restore, "run_restore", run)
    result = run_module(module, args)
    assert result["failed"] is True and words in result["msg"], result["msg"]
    assert run.calls == []


def test_the_engines_errors_name_the_modules_options(run_module, recorder, monkeypatch):
    monkeypatch.setattr(module.pitr, "run_restore_pitr", recorder(error=RefusedError(
        "--data-dir /srv/restored is not empty (it holds PG_VERSION): restore --pitr never writes over a data directory")))
    result = run_module(module, ARGS)
    assert result["msg"].startswith("data_dir /srv/restored is not empty (it holds PG_VERSION)")
    assert result["error"]["type"] == "RefusedError"
    bad = run_module(module, dict(ARGS, target_lsn="nowhere"))
    assert bad["msg"].startswith("target_lsn 'nowhere' is not a WAL location")


def test_backup_drill_pitr_drills_the_hosts_cluster_and_plans_in_check_mode(run_module, recorder, monkeypatch):
    report = {"host": "db1", "database": "@cluster", "backup": "db1_base_20250809_020000", "result": "passed",
              "rpo_seconds": 60.0, "rto_seconds": 12.0, "report_key": "drills/db1/@cluster/x.json", "checks": []}
    run = recorder(result={"status": "passed", "drills": [report]})
    monkeypatch.setattr(backup_drill.drill, "run_pitr_drill", run)
    args = {"bucket": "b", "encryption_key": KEY, "pitr": True, "host": "db1", "target_time": "2025-08-09T14:00:00Z",
            "scratch_dir": "/srv/scratch"}
    result = run_module(backup_drill, args)
    assert result["status"] == "passed" and result["changed"] is True and "@cluster" in result["table"][1]
    assert (run.kwargs["host"], run.kwargs["scratch_parent"], run.kwargs["target"].kind) == ("db1", "/srv/scratch", "time")
    plan = recorder(result=[dict(report, backup_timestamp="2025-08-09T02:00:00Z")])
    monkeypatch.setattr(backup_drill.drill, "plan_pitr_drill", plan)
    planned = run_module(backup_drill, args, check_mode=True)
    assert planned["status"] == "none" and planned["changed"] is False and planned["plan"][0]["database"] == "@cluster"


@pytest.mark.parametrize("args, words", [
    ({"pitr": True, "all_hosts": True}, "pitr: true drills one host's cluster (host, default this host's): drop all_hosts"),
    ({"pitr": True, "assertions": ["select true"]}, "drop assertions"),
    ({"target_time": "2025-08-09"}, "target_time belongs to a point-in-time drill: add pitr: true, or leave it out"),
    ({"target_time": "2025-08-09", "scratch_dir": "/x"}, "target_time and scratch_dir belong to a point-in-time drill"),
])
def test_backup_drill_refuses_what_a_point_in_time_drill_does_not_take(run_module, recorder, monkeypatch, args, words):
    run = recorder(result={"status": "passed", "drills": []})
    monkeypatch.setattr(backup_drill.drill, "run_pitr_drill", run)
    monkeypatch.setattr(backup_drill.drill, "run_drill", run)
    result = run_module(backup_drill, dict(args, bucket="b", encryption_key=KEY))
    assert result["failed"] is True and words in result["msg"] and run.calls == []
