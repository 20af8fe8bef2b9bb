# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The last-run record (workflows/runrecord.py) and its wiring in the host command's dispatch (cli.main)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import logging
import os
import re
import shutil
import subprocess

import pytest

from ansible_collections.quankey.backup.plugins.module_utils import cli
from ansible_collections.quankey.backup.plugins.module_utils.workflows import runrecord

SAMPLE = re.compile(r'^([a-z_]+)\{((?:[a-z]+="(?:[^"\\]|\\.)*",?)*)\} (-?[0-9.e+]+)$')


class Clock:
    def __init__(self, now):
        self.now = now

    def __call__(self):
        return self.now


def samples(text):
    """{(name, frozenset of labels): value} of an exposition; every line is a HELP, a TYPE or a well-formed sample."""
    found = {}
    for line in text.splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            continue
        match = SAMPLE.match(line)
        assert match, "not a sample line: %r" % line
        labels = frozenset(re.findall(r'([a-z]+)="((?:[^"\\]|\\.)*)"', match.group(2)))
        found[(match.group(1), labels)] = float(match.group(3))
    return found


def value(found, name, **labels):
    wanted = dict({"command": "backup", "host": "db1", "database": "shop"}, **labels)
    return found[(name, frozenset(wanted.items()))]


def test_a_successful_run_records_its_times_stages_bytes_and_success(tmp_path):
    clock = Clock(1000.0)
    record = runrecord.start(str(tmp_path), "backup", "db1", "shop", clock=clock)
    prom = tmp_path / "quankey_backup_backup_shop.prom"
    started = samples(prom.read_text())
    assert value(started, "quankey_backup_run_last_start_timestamp_seconds") == 1000.0
    assert ("quankey_backup_run_last_end_timestamp_seconds" not in
            set(name for name, _labels in started))  # never ended: an alert sees a start and no end
    clock.now = 1012.5
    record.ended(0, {"stage_seconds": {"prepare": 0.5, "dump_upload": 11.0, "commit": 0.25},
                     "size_bytes": 4096, "dump_bytes": 9000})
    ended = samples(prom.read_text())
    assert value(ended, "quankey_backup_run_last_end_timestamp_seconds") == 1012.5
    assert value(ended, "quankey_backup_run_last_exit_code") == 0
    assert value(ended, "quankey_backup_run_last_duration_seconds") == 12.5
    assert value(ended, "quankey_backup_run_last_stage_duration_seconds", stage="dump_upload") == 11.0
    assert value(ended, "quankey_backup_run_last_bytes", kind="stored") == 4096
    assert value(ended, "quankey_backup_run_last_bytes", kind="dump") == 9000
    assert value(ended, "quankey_backup_run_last_success_timestamp_seconds") == 1012.5
    assert value(ended, "quankey_backup_runs_total") == 1 and value(ended, "quankey_backup_run_failures_total") == 0
    state = json.loads((tmp_path / "quankey_backup_backup_shop.json").read_text())
    assert state["state"] == "ended" and state["last_success_at"] == "1970-01-01T00:16:52Z"
    assert oct(os.stat(str(prom)).st_mode & 0o777) == "0o644"  # node_exporter runs as another user
    assert [name for name in os.listdir(str(tmp_path)) if name.startswith(".")] == []  # no temp file left


def test_a_failed_run_keeps_the_last_success_and_a_killed_one_shows_a_start_after_its_end(tmp_path):
    clock = Clock(1000.0)
    record = runrecord.start(str(tmp_path), "backup", "db1", "shop", clock=clock)
    clock.now = 1010.0
    record.ended(0, {"stage_seconds": {"dump_upload": 9.0}, "size_bytes": 10})
    clock.now = 2000.0
    record = runrecord.start(str(tmp_path), "backup", "db1", "shop", clock=clock)
    clock.now = 2003.0
    record.ended(5, None, error="upload failed: the bucket refused the write")  # raised: no result
    found = samples((tmp_path / "quankey_backup_backup_shop.prom").read_text())
    assert value(found, "quankey_backup_run_last_exit_code") == 5
    assert value(found, "quankey_backup_run_last_success_timestamp_seconds") == 1010.0
    assert value(found, "quankey_backup_run_last_bytes", kind="stored") == 10  # the last success's, not the failure's
    assert value(found, "quankey_backup_runs_total") == 2 and value(found, "quankey_backup_run_failures_total") == 1
    state = json.loads((tmp_path / "quankey_backup_backup_shop.json").read_text())
    assert state["error"] == "upload failed: the bucket refused the write"
    clock.now = 3000.0
    runrecord.start(str(tmp_path), "backup", "db1", "shop", clock=clock)  # then SIGKILL: no end is ever written
    found = samples((tmp_path / "quankey_backup_backup_shop.prom").read_text())
    assert (value(found, "quankey_backup_run_last_start_timestamp_seconds")
            > value(found, "quankey_backup_run_last_end_timestamp_seconds"))
    assert value(found, "quankey_backup_run_last_exit_code") == 5  # the last run that ended
    assert json.loads((tmp_path / "quankey_backup_backup_shop.json").read_text())["state"] == "running"


def test_labels_are_escaped_and_file_names_made_safe(tmp_path):
    record = runrecord.start(str(tmp_path), "prune", 'we"ird\\host', "a db/x\n", clock=Clock(5.0))
    record.ended(0, {"deleted": ["a", "b"], "kept": ["c"]})
    names = os.listdir(str(tmp_path))
    assert sorted(names) == ["quankey_backup_prune_a_db_x_.json", "quankey_backup_prune_a_db_x_.prom"]
    text = (tmp_path / "quankey_backup_prune_a_db_x_.prom").read_text()
    assert 'host="we\\"ird\\\\host",database="a db/x\\n"' in text
    found = samples(text)
    assert found[("quankey_backup_run_last_items", frozenset(
        {"command": "prune", "host": 'we\\"ird\\\\host', "database": "a db/x\\n", "kind": "deleted"}.items()))] == 2
    assert runrecord.file_stem("drill", None) == "quankey_backup_drill_all"


def test_drill_results_count_passed_and_failed(tmp_path):
    record = runrecord.start(str(tmp_path), "drill", "db1", "shop", clock=Clock(5.0))
    record.ended(2, {"status": "failed", "drills": [{"result": "passed"}, {"result": "failed"}]})
    state = json.loads((tmp_path / "quankey_backup_drill_shop.json").read_text())
    assert state["exit_code"] == 2 and state["items"] == {"passed": 1, "failed": 1} and "last_success" not in state
    assert runrecord.outcome_of({"drills": [{"result": "passed"}, {"result": "failed"}, {"result": "passed"}]})[2] == {
        "passed": 2, "failed": 1}
    assert runrecord.outcome_of({"present": 4, "copied": 1, "failed": 0, "skipped": 2, "complete": True})[2] == {
        "present": 4, "copied": 1, "failed": 0, "skipped": 2}  # replicate


def test_nothing_is_recorded_without_a_directory_or_for_other_commands(tmp_path, caplog):
    assert runrecord.start("", "backup", "h", "d") is None
    assert runrecord.start(str(tmp_path), "list", "h", "d") is None
    with caplog.at_level(logging.WARNING, logger="quankey_backup"):
        assert runrecord.start("relative/dir", "backup", "h", "d") is None
    assert "BACKUP_METRICS_DIR=relative/dir is not an absolute path" in caplog.text
    assert os.listdir(str(tmp_path)) == []


def test_a_directory_it_cannot_write_is_a_warning_not_a_failure(tmp_path, caplog):
    missing = str(tmp_path / "nowhere")
    with caplog.at_level(logging.WARNING, logger="quankey_backup"):
        record = runrecord.start(missing, "backup", "h", "d")
        assert record is not None and record.ended(0, {}) is False
    assert "could not record the start of this run in BACKUP_METRICS_DIR=%s" % missing in caplog.text
    assert "the run itself is not affected" in caplog.text


def test_an_unreadable_previous_state_starts_afresh(tmp_path):
    (tmp_path / "quankey_backup_backup_d.json").write_text("{not json")
    record = runrecord.start(str(tmp_path), "backup", "h", "d", clock=Clock(7.0))
    record.ended(0, {})
    assert json.loads((tmp_path / "quankey_backup_backup_d.json").read_text())["runs"] == 1


@pytest.mark.skipif(not shutil.which("promtool"), reason="promtool is not installed (Debian's prometheus package)")
def test_promtool_accepts_the_exposition(tmp_path):
    record = runrecord.start(str(tmp_path), "backup", "h", "d", clock=Clock(7.0))
    record.ended(0, {"stage_seconds": {"prepare": 0.1}, "size_bytes": 1, "dump_bytes": 2})
    text = (tmp_path / "quankey_backup_backup_d.prom").read_text()
    done = subprocess.run(["promtool", "check", "metrics"], input=text, universal_newlines=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
    assert done.returncode == 0 and done.stdout == "", done.stdout  # neither a format error nor a lint finding


def test_the_host_command_records_a_run_its_settings_fail(tmp_path):
    """cli.main: the record starts before the settings are checked, and its end is written whatever happened."""
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    environ = {"BACKUP_METRICS_DIR": str(metrics), "DB_NAME": "shop", "BACKUP_HOST_ID": "db1", "HOME": str(tmp_path),
               "QUANKEY_ENV_FILE": str(tmp_path / "backup.env")}
    (tmp_path / "backup.env").write_text("# nothing: the settings are missing\n")
    os.chmod(str(tmp_path / "backup.env"), 0o600)
    status = cli.main(["-q", "prune"], environ=environ)
    assert status == 3  # no key to verify signatures with: a configuration error
    state = json.loads((metrics / "quankey_backup_prune_shop.json").read_text())
    assert (state["command"], state["host"], state["database"], state["exit_code"]) == ("prune", "db1", "shop", 3)
    assert "BACKUP_SIGNING_KEY" in state["error"] and state["ended"] >= state["started"]
    found = samples((metrics / "quankey_backup_prune_shop.prom").read_text())
    assert found[("quankey_backup_run_last_exit_code", frozenset(
        {"command": "prune", "host": "db1", "database": "shop"}.items()))] == 3
    assert cli.main(["-q", "list"], environ=environ) == 3 and sorted(os.listdir(str(metrics))) == [
        "quankey_backup_prune_shop.json", "quankey_backup_prune_shop.prom"]  # list is not recorded


def test_a_run_over_every_database_is_recorded_as_all(tmp_path):
    environ = {"BACKUP_METRICS_DIR": str(tmp_path), "DB_NAME": "shop", "BACKUP_HOST_ID": "drillhost",
               "HOME": str(tmp_path), "QUANKEY_ENV_FILE": str(tmp_path / "backup.env")}
    (tmp_path / "backup.env").write_text("# nothing\n")
    os.chmod(str(tmp_path / "backup.env"), 0o600)
    cli.main(["-q", "drill", "--all-hosts"], environ=environ)
    cli.main(["-q", "drill", "--db", "crm"], environ=environ)
    # a base backup is the whole cluster's (the role's scheduled one runs with DB_NAME set: it is not its database)
    assert cli.main(["-q", "basebackup"], environ=environ) != 0
    assert sorted(name for name in os.listdir(str(tmp_path)) if name.endswith(".prom")) == [
        "quankey_backup_basebackup_all.prom", "quankey_backup_drill_all.prom", "quankey_backup_drill_crm.prom"]
    text = (tmp_path / "quankey_backup_drill_all.prom").read_text()
    assert 'quankey_backup_run_last_exit_code{command="drill",host="drillhost",database="all"} ' in text
    state = json.loads((tmp_path / "quankey_backup_basebackup_all.json").read_text())
    assert (state["command"], state["database"], state["state"]) == ("basebackup", None, "ended") and state["exit_code"]
