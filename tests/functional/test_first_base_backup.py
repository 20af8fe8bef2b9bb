# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The pg_backup role's first base backup (roles/pg_backup/tasks/first_base_backup.yml), run by a real
ansible-playbook on localhost against the test bed's PostgreSQL and S3: the listing by the real `quankey-backup` (this
venv's) with a real wal.env, the base backup by the real runner (the role's quankey-backup-base-run.sh.j2, rendered by
Ansible for the case's host, its lock in the case's pg_backup_home).

The server's OS user is the user this test runs as (root), not postgres: the postgres OS user cannot run this venv
(its interpreter lives under root's 0700 home; test_wal_archiving.py installs an engine for it from a wheelhouse, which
these paths do not need), and the wal.env reaches the test bed's cluster over loopback with its password instead of
the socket and peer authentication. The runuser to the server's OS user, the marker, the tee to the log are the
role's own. Molecule's archiving scenario covers the whole role on a chroot host.

Each case is its own host (BACKUP_HOST_ID, pg_backup_home, wal.env, runner) in the module's bucket:
the first run takes the base backup with the runner, then the marker stops later runs, and a bucket that already holds
one gets the marker without a run; a listing the bucket refuses (an IAM user with no policy attached yet) warns and
leaves no marker; a runner that finds the lock held (exit 75) is neither a failure nor a change, and leaves no marker;
check mode and a pending restart of PostgreSQL list nothing and run nothing."""

import fcntl
import json
import os
import pwd
import sys

import pytest

from hostcommand import CLI, ROOT, run_cli, run_module
from testbed import MotoServer, write_env_file

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the role runs the listing and the runner with runuser, "
                                                          "which needs root")

RUNNER_TEMPLATE = ROOT / "roles" / "pg_backup" / "templates" / "quankey-backup-base-run.sh.j2"
LIST = "List this host's base backups (the first base backup is taken only when there is none)"
WARN = "Say why the first base backup is left to the schedule (the bucket could not be listed)"
TAKE = "Take the first base backup now, as the schedule would (a large cluster takes a while; the log has it too)"
MARK = "Remember that the host has its first base backup (later runs of the role take none)"
WAITS = "Say what the first base backup waits for (check mode, or a restart of PostgreSQL pending)"
MARKER_LOOK = "Look for the marker of the first base backup"


class Host:
    """One case's host: its directories, wal.env (S3 settings of ``env``) and role variables."""

    def __init__(self, tmp_path, env, host_id):
        self.dir = tmp_path
        self.env = dict(env, BACKUP_HOST_ID=host_id)
        self.home = tmp_path / "home"  # pg_backup_home: the marker and the runner's lock
        self.log = tmp_path / "log" / "backup.log"
        self.runner = tmp_path / "sbin" / "quankey-backup-base-run"
        self.marker = self.home / "base-initial.done"
        for directory in (self.home, self.log.parent, self.runner.parent):
            directory.mkdir()
        self.wal_env = tmp_path / "wal.env"
        write_env_file(self.wal_env, self.env)
        self.vars = {
            "pg_backup_kind": "physical", "pg_backup_home": str(self.home), "pg_backup_log_dir": str(self.log.parent),
            "pg_backup_runner_path": str(tmp_path / "sbin" / "quankey-backup-run"),
            "pg_backup_wal_env_file": str(self.wal_env), "_pg_backup_command": CLI,
            "pg_backup_postgres_os_user": pwd.getpwuid(os.geteuid()).pw_name, "pg_backup_base_fast_checkpoint": True,
            "pg_backup_host_id": host_id, "ansible_python_interpreter": sys.executable,
        }

    def play(self, *options, **extra):
        """The role's first_base_backup tasks on localhost, after the real runner is rendered for this host;
        ``(the role's task results by name, rc, report)``. ``extra``: more variables."""
        playbook = self.dir / "first.yml"
        playbook.write_text(json.dumps([{
            "name": "First base backup", "hosts": "localhost", "gather_facts": False,
            "vars_files": [str(ROOT / "roles" / "pg_backup" / "defaults" / "main.yml"),
                           str(ROOT / "roles" / "pg_backup" / "vars" / "main.yml")],
            "tasks": [
                {"name": "The runner the schedule runs", "ansible.builtin.template": {
                    "src": str(RUNNER_TEMPLATE), "dest": "{{ _pg_backup_base_runner_path }}", "mode": "0755"},
                 "check_mode": False},
                {"name": "The role's first base backup", "ansible.builtin.include_role": {
                    "name": "quankey.backup.pg_backup", "tasks_from": "first_base_backup"}}]}]), encoding="utf-8")
        extra_vars = self.dir / "vars.json"
        extra_vars.write_text(json.dumps(dict(self.vars, **extra)), encoding="utf-8")
        report, rc = run_module(self.dir, "ansible-playbook", "-e", "@%s" % extra_vars, str(playbook), *options,
                                whole=True)
        tasks = dict((task["task"]["name"].split(" : ", 1)[-1], task["hosts"]["localhost"])
                     for task in report["plays"][0]["tasks"] if "localhost" in task["hosts"])
        for secret in (self.env["AWS_SECRET_ACCESS_KEY"], self.env["BACKUP_ENCRYPTION_KEY"], self.env["PGPASSWORD"]):
            assert secret not in json.dumps(report)
        return tasks, rc, report

    def base_backups(self):
        """The names of this host's base backups in the bucket, as `quankey-backup list` gives them."""
        return [item["name"] for item in json.loads(run_cli(self.env, "list", "--json", check=0).stdout)["base_backups"]]


@pytest.fixture(scope="module")
def env(testbed):
    """The test bed's settings under the prefix first/ (each case adds its own BACKUP_HOST_ID)."""
    return dict(testbed.backup_env("postgres"), S3_PREFIX="first/", S3_RETRY_WINDOW_SECONDS="2")


def test_the_first_run_takes_it_with_the_runner_then_the_marker_stops_later_runs_and_a_found_one_is_marked(
        env, tmp_path):
    host = Host(tmp_path, env, "first")
    tasks, rc, report = host.play()
    assert rc == 0, json.dumps(report)[-3000:]
    assert json.loads(tasks[LIST]["stdout"])["base_backups"] == []
    assert tasks[TAKE]["rc"] == 0 and tasks[TAKE]["changed"], tasks[TAKE]
    assert tasks[MARK]["changed"] and host.marker.is_file()
    taken = host.base_backups()
    assert len(taken) == 1 and taken[0].startswith("cluster_base_")
    log = host.log.read_text(encoding="utf-8")
    assert "INFO run: base backup of the cluster" in log and "INFO run: base backup done (exit 0)" in log

    # (f) the marker exists: the role neither lists nor runs anything
    tasks, rc, report = host.play()
    assert rc == 0, json.dumps(report)[-3000:]
    assert tasks[MARKER_LOOK]["stat"]["exists"]
    assert all(tasks[name].get("skipped") for name in (LIST, WARN, TAKE, MARK)), tasks
    assert host.log.read_text(encoding="utf-8") == log and host.base_backups() == taken

    # (e) no marker, but the bucket holds a base backup of the host (taken by hand, or by the schedule): the role lists
    # it, runs nothing and writes the marker
    host.marker.unlink()
    tasks, rc, report = host.play()
    assert rc == 0, json.dumps(report)[-3000:]
    assert [item["name"] for item in json.loads(tasks[LIST]["stdout"])["base_backups"]] == taken
    assert tasks[TAKE].get("skipped") and tasks[MARK]["changed"] and host.marker.is_file()
    assert host.log.read_text(encoding="utf-8") == log and host.base_backups() == taken


def test_a_listing_the_bucket_refuses_warns_naming_the_host_and_why_and_leaves_no_marker(env, tmp_path):
    with MotoServer(initial_no_auth_action_count=3) as server:  # the bucket, then a user and its key, free of IAM
        server.create_bucket(env["S3_BUCKET"])
        iam = server.client("iam")
        iam.create_user(UserName="host")  # its policy not attached yet (prepare_bucket.yml has not run)
        key = iam.create_access_key(UserName="host")["AccessKey"]
        host = Host(tmp_path, dict(env, S3_ENDPOINT_URL=server.endpoint_url, AWS_ACCESS_KEY_ID=key["AccessKeyId"],
                                   AWS_SECRET_ACCESS_KEY=key["SecretAccessKey"]), "refused")
        tasks, rc, report = host.play()
    assert rc == 0, json.dumps(report)[-3000:]
    assert tasks[LIST]["rc"] != 0 and not tasks[LIST].get("failed"), tasks[LIST]
    assert "ERROR list: S3 access denied for s3://%s/first/" % env["S3_BUCKET"] in tasks[LIST]["stderr"]
    warning = " ".join(tasks[WARN]["msg"].split())
    assert warning.startswith("WARNING: the role could not list localhost's base backups to take the first one (")
    assert tasks[LIST]["stderr"].strip() in warning and "the schedule takes it" in warning, warning
    assert tasks[TAKE].get("skipped") and tasks[MARK].get("skipped") and not host.marker.exists()
    assert not host.log.exists()  # the runner never started


def test_a_runner_finding_the_lock_held_is_neither_a_failure_nor_a_change_and_leaves_no_marker(env, tmp_path):
    """The real runner, its lock held as a scheduled run holds it (flock on the same file): it exits 75."""
    host = Host(tmp_path, env, "locked")
    with open(host.home / "base.lock", "a", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        tasks, rc, report = host.play()
    assert rc == 0, json.dumps(report)[-3000:]
    assert json.loads(tasks[LIST]["stdout"])["base_backups"] == []
    taken = tasks[TAKE]
    assert taken["rc"] == 75 and not taken["changed"] and not taken.get("failed"), taken
    assert "the previous base backup still holds %s" % (host.home / "base.lock") in taken["stdout"]
    assert not any(task.get("changed") for name, task in tasks.items() if name != "The runner the schedule runs")
    assert tasks[MARK].get("skipped") and not host.marker.exists()
    assert host.base_backups() == []


@pytest.mark.parametrize("case", ["check mode", "restart pending"])
def test_check_mode_and_a_pending_restart_list_nothing_run_nothing_and_say_what_a_real_run_does(env, tmp_path, case):
    host = Host(tmp_path, env, case.replace(" ", "-"))
    if case == "check mode":
        tasks, rc, report = host.play("--check")
        expected = "check mode: a real run takes the host's first base backup (%s, as %s) when the bucket holds none of "\
                   "localhost." % (host.runner, host.vars["pg_backup_postgres_os_user"])
    else:
        tasks, rc, report = host.play(_pg_backup_wal_restart_pending=True)
        expected = "RESTART PENDING: the role takes the host's first base backup (%s, as %s) when the bucket holds none "\
                   "of localhost and archiving is on: restart PostgreSQL, then run the role again (or "\
                   "playbooks/backup_now.yml)." % (host.runner, host.vars["pg_backup_postgres_os_user"])
    assert rc == 0, json.dumps(report)[-3000:]
    assert " ".join(tasks[WAITS]["msg"].split()) == expected
    assert all(tasks[name].get("skipped") for name in (LIST, WARN, TAKE, MARK)), tasks
    assert not host.marker.exists() and not host.log.exists()
    assert host.base_backups() == []
