# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Point-in-time recovery from Ansible, played for real: ``ansible-playbook quankey.backup.restore -e mode=pitr`` (the
s3_backup_restore module's pitr options) and ``quankey.backup.drill -e pitr=true`` (backup_drill's) on a host set up
as the pg_backup role leaves one (its env file, the engine's Python), against test_pitr.py's archiving cluster (its
base backup, then batches of rows committed at known times, the WAL pushed to the test bed's S3). The plan in check
mode writes nothing; the recovery to a time between two commits gives exactly the rows committed before it; a data
directory holding anything, and options of a dump's restore, are refused with nothing changed; a point-in-time
drill's report (database @cluster) is what health's drill rule judges on a host that archives its WAL."""

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

import test_pitr
from hostcommand import run_cli, run_playbook
from testbed import write_env_file

ROOT = Path(__file__).resolve().parents[2]

archive = test_pitr.archive  # the archiving cluster, its base backup and the rows committed after it (its own copy)


@pytest.fixture(scope="module")
def host(archive, tmp_path_factory):  # pylint: disable=redefined-outer-name
    """The archiving cluster's host as the pg_backup role leaves one, and the same host as a drill host."""
    tmp = tmp_path_factory.mktemp("pitr-playbooks")
    collections = tmp / "collections" / "ansible_collections" / "quankey"
    collections.mkdir(parents=True)
    (collections / "backup").symlink_to(ROOT)
    python = tmp / "opt" / "venv" / "bin" / "python"  # <pg_backup_install_dir>/venv/bin/python
    python.parent.mkdir(parents=True)
    python.write_text("#!/bin/sh\nexec %s \"$@\"\n" % sys.executable)
    python.chmod(0o755)
    (tmp / "home").mkdir()
    write_env_file(str(tmp / "backup.env"), archive.env)
    common = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable, "ansible_become": False}
    inventory = {
        "databases": {"hosts": {test_pitr.HOST: dict(common, pg_backup_env_file=str(tmp / "backup.env"),
                                                     pg_backup_install_dir=str(tmp / "opt"),
                                                     pg_backup_home=str(tmp / "home"))}},
        "drill_hosts": {"hosts": {"pitrdrill": dict(common, restore_drill_env_file=str(tmp / "backup.env"),
                                                    restore_drill_install_dir=str(tmp / "opt"))}}}
    (tmp / "inventory.json").write_text(json.dumps(inventory))
    return {"tmp": tmp, "env": archive.env}


def _play(host, playbook, *options):  # pylint: disable=redefined-outer-name
    """ansible-playbook <playbook>; the modules get their settings from the host's env file only."""
    return run_playbook(host["tmp"], host["env"], playbook, *options, drop_prefixes=("WAL_",))


def test_the_restore_playbook_plans_then_recovers_the_cluster_to_a_time_into_a_new_directory(archive, host):  # pylint: disable=redefined-outer-name
    parent = test_pitr._new_dir("quankey-pitr-play-")  # pylint: disable=protected-access
    data_dir = parent / "restored"
    try:
        planned = _play(host, "quankey.backup.restore", "-e", "mode=pitr", "-e", "data_dir=%s" % data_dir,
                        "-e", "target_time=%s" % archive.between, "--check")
        assert planned.returncode == 0, planned.stdout
        assert "base backup: %s of host %s" % (archive.base, test_pitr.HOST) in planned.stdout
        assert "recovery to: time %s, then PROMOTE" % archive.between in planned.stdout
        assert "into: %s (new: it will be created), owned by" % data_dir in planned.stdout
        assert not data_dir.exists()

        done = _play(host, "quankey.backup.restore", "-e", "mode=pitr", "-e", "data_dir=%s" % data_dir,
                     "-e", "target_time=%s" % archive.between, "-e", "no_archive=true", "-e", "confirm=yes")
        assert done.returncode == 0, done.stdout
        assert "restored base backup %s of host %s into %s" % (archive.base, test_pitr.HOST, data_dir) in done.stdout
        assert "promoted at" in done.stdout and "the server is stopped: start it with its service" in done.stdout
        restored = test_pitr.Restored(data_dir, archive.cluster.password).start()
        try:
            assert test_pitr._batches(restored.psql) == [("before-base", "50"), ("one", "50")]  # pylint: disable=protected-access
        finally:
            restored.stop()
    finally:
        shutil.rmtree(parent, ignore_errors=True)


@pytest.mark.parametrize("options, words", [
    (("-e", "target_db=x"), "target_db belong to a database's restore from a dump"),
    (("-e", "target_time=2026-01-01", "-e", "target_lsn=0/1"), "give one recovery target, not 2"),
    ((), None),  # the directory holds a file: the module refuses it before anything is read
])
def test_a_non_empty_directory_and_options_that_do_not_fit_are_refused_with_nothing_changed(
        host, options, words):  # pylint: disable=redefined-outer-name
    data_dir = test_pitr._new_dir("quankey-pitr-play-")  # pylint: disable=protected-access
    try:
        (data_dir / "keep.txt").write_text("mine\n")
        refused = _play(host, "quankey.backup.restore", "-e", "mode=pitr", "-e", "data_dir=%s" % data_dir,
                        "-e", "confirm=yes", *options)
        assert refused.returncode != 0
        assert (words or "data_dir %s is not empty (it holds keep.txt)" % data_dir) in refused.stdout, refused.stdout
        assert sorted(os.listdir(data_dir)) == ["keep.txt"] and (data_dir / "keep.txt").read_text() == "mine\n"
        assert "TASK [Recover the cluster" not in refused.stdout
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def _drill_findings(env):
    report = json.loads(run_cli(dict(env, WAL_ARCHIVING="true"), "health", "--json").stdout)
    return report, [item for item in report["findings"] if item["rule"] == "drill"]


def test_a_point_in_time_drill_from_the_playbook_is_the_drill_health_judges(archive, host):  # pylint: disable=redefined-outer-name
    scratch = test_pitr._new_dir("quankey-pitr-scratch-")  # pylint: disable=protected-access
    env = dict(host["env"], DRILL_MAX_AGE_DAYS="7")
    try:
        _report, findings = _drill_findings(env)
        assert [item["severity"] for item in findings] == ["warning"]  # no drill yet, and the age is asked for
        assert findings[0]["message"].startswith("no passed restore drill")

        planned = _play(host, "quankey.backup.drill", "-e", "pitr=true", "-e", "backup_host=%s" % test_pitr.HOST,
                        "-e", "scratch_dir=%s" % scratch, "--check")
        assert planned.returncode == 0, planned.stdout
        assert "@cluster" in planned.stdout and archive.base in planned.stdout and os.listdir(scratch) == []

        done = _play(host, "quankey.backup.drill", "-e", "pitr=true", "-e", "backup_host=%s" % test_pitr.HOST,
                     "-e", "target_time=%s" % archive.between, "-e", "scratch_dir=%s" % scratch)
        assert done.returncode == 0, done.stdout
        assert "passed" in done.stdout and os.listdir(scratch) == []
        report, findings = _drill_findings(env)
        assert findings == [] and report["drill"]["result"] == "passed" and report["drill"]["backup"] == archive.base
        # without WAL_ARCHIVING the host is judged by its dump drills only: the point-in-time drill does not count
        dump_only = json.loads(run_cli(env, "health", "--json").stdout)
        assert dump_only["drill"] is None

        # a target before every base backup: the drill fails, the play fails after the table, health is critical
        failed = _play(host, "quankey.backup.drill", "-e", "pitr=true", "-e", "backup_host=%s" % test_pitr.HOST,
                       "-e", "target_time=2001-01-01T00:00:00Z", "-e", "scratch_dir=%s" % scratch)
        assert failed.returncode != 0 and "no base backup ended before" in failed.stdout, failed.stdout
        report, findings = _drill_findings(env)
        assert report["drill"]["result"] == "failed"
        assert [item["severity"] for item in findings] == ["critical"], findings
        assert "no base backup ended before" in findings[0]["message"]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def test_the_drill_playbook_refuses_a_point_in_time_drill_without_its_host(host):  # pylint: disable=redefined-outer-name
    refused = _play(host, "quankey.backup.drill", "-e", "pitr=true")
    assert refused.returncode != 0 and "pitr=true drills one host's cluster: give backup_host" in refused.stdout
    assert "TASK [Drill" not in refused.stdout
