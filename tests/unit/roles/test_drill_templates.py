# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""restore_drill's templates: the engine reads every value of the drills' env file back exactly (secrets with quotes,
the assertions as a JSON list), and the runner drills the fleet or each target, after the splay, under the lock."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import subprocess

import jinja2
import yaml
from ansible.plugins.filter.core import FilterModule as AnsibleCoreFilters
from ansible.plugins.filter.mathstuff import FilterModule as AnsibleMathFilters
from ansible.plugins.test.core import TestModule as AnsibleCoreTests

from ansible_collections.quankey.backup.plugins.module_utils import config

ROLE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "roles", "restore_drill")
NASTY = "it's \"quoted\" $HOME `id` \\ # not a comment; a=b"
KEY = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3I="


def _render(template, **overrides):
    with open(os.path.join(ROLE_DIR, "defaults", "main.yml")) as handle:
        values = dict((name, value) for name, value in yaml.safe_load(handle).items() if "{{" not in str(value))
    values.update({
        "ansible_managed": "Ansible managed", "inventory_hostname": "drill1", "restore_drill_host_id": "drill1",
        "restore_drill_systemd_on_calendar": "Sun *-*-* 05:00:00", "_restore_drill_client_version": "17",
        "restore_drill_db_password": NASTY, "restore_drill_s3_bucket": "quankey-backups-prod",
        "restore_drill_s3_prefix": "prod", "restore_drill_aws_access_key_id": "AKIAEXAMPLE",
        "restore_drill_aws_secret_access_key": "se'cr\"et$", "restore_drill_encryption_key": KEY,
        "restore_drill_assertions": ["SELECT count(*) > 0 FROM \"users\" WHERE name <> 'x'"],
        "_restore_drill_lock_file": "/var/lib/quankey-backup/drill.lock",
        "_restore_drill_command": "/opt/quankey-backup/venv/bin/quankey-backup",
        "_restore_drill_log_file": "/var/log/quankey/drill.log",
        "restore_drill_metrics_dir": "/var/lib/prometheus/node-exporter",
    })
    values.update(overrides)
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(os.path.join(ROLE_DIR, "templates")),
                                     trim_blocks=True, keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    environment.filters.update(AnsibleCoreFilters().filters())
    environment.tests.update(AnsibleCoreTests().tests())  # the unit's select('match', ...)
    return environment.get_template(template).render(**values)


def test_the_engine_reads_back_every_value_of_the_env_file():
    values = config.parse_env_text(_render("drill.env.j2"))
    assert values["PGPASSWORD"] == NASTY and values["AWS_SECRET_ACCESS_KEY"] == "se'cr\"et$"
    assert values["PG_BIN_DIR"] == "/usr/lib/postgresql/17/bin" and values["BACKUP_HOST_ID"] == "drill1"
    assert "DB_NAME" not in values  # a drill host backs nothing up
    settings = config.settings_from_env(values)
    assert (settings.bucket, settings.prefix, settings.host, settings.restore_role) == (
        "quankey-backups-prod", "prod/", "drill1", "quankey_restore")
    assert settings.drill_assertions == ["SELECT count(*) > 0 FROM \"users\" WHERE name <> 'x'"]
    assert settings.encryption_key == KEY
    assert values["BACKUP_METRICS_DIR"] == "/var/lib/prometheus/node-exporter"  # the drill runs are recorded
    assert "BACKUP_METRICS_DIR" not in config.parse_env_text(_render("drill.env.j2", restore_drill_metrics_dir=""))


def test_optional_values_are_written_only_when_set():
    values = config.parse_env_text(_render("drill.env.j2", restore_drill_db_password="", restore_drill_assertions=[],
                                           restore_drill_aws_access_key_id="", restore_drill_aws_secret_access_key="",
                                           restore_drill_aws_profile="drill", restore_drill_decryption_keys=["a", "b"],
                                           restore_drill_env_extra={"HTTPS_PROXY": "http://proxy:3128"}))
    for absent in ("PGPASSWORD", "DRILL_ASSERTIONS", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "S3_ENDPOINT_URL",
                   "BACKUP_SIGNING_KEY", "BACKUP_IDENTITY_FILE"):
        assert absent not in values, absent
    assert (values["AWS_PROFILE"], values["BACKUP_DECRYPTION_KEYS"]) == ("drill", "a b")
    assert values["HTTPS_PROXY"] == "http://proxy:3128"


def _runner(tmp_path, **overrides):
    """The runner with its command replaced by a script that logs its arguments and DB_NAME."""
    command = tmp_path / "quankey-backup"
    command.write_text("#!/bin/sh\necho \"DB_NAME=${DB_NAME:-} $*\" >> %s\n" % (tmp_path / "calls"))
    command.chmod(0o755)
    runner = tmp_path / "run"
    runner.write_text(_render("quankey-drill-run.sh.j2", _restore_drill_command=str(command),
                              _restore_drill_lock_file=str(tmp_path / "drill.lock"), **overrides))
    runner.chmod(0o755)
    return runner


def _calls(tmp_path):
    return (tmp_path / "calls").read_text().splitlines()


def test_the_runner_drills_the_whole_bucket_by_default(tmp_path):
    done = subprocess.run([str(_runner(tmp_path))], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert _calls(tmp_path) == ["DB_NAME= --env-file /etc/quankey/drill.env drill --all-hosts"]


def test_the_runner_drills_each_target_and_sleeps_within_the_splay_first(tmp_path):
    runner = _runner(tmp_path, restore_drill_targets=[{"host": "db1", "database": "app"},
                                                      {"host": "db 2", "database": "shop"}])
    done = subprocess.run([str(runner), "--splay", "1"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert _calls(tmp_path) == ["DB_NAME=app --env-file /etc/quankey/drill.env drill --host db1",
                                "DB_NAME=shop --env-file /etc/quankey/drill.env drill --host db 2"]
    delay = int(done.stdout.split("splay: starting in ")[1].split("s")[0])
    assert 0 <= delay <= 1


def test_a_run_while_the_previous_one_holds_the_lock_skips(tmp_path):
    runner = _runner(tmp_path)
    held = subprocess.run(["flock", str(tmp_path / "drill.lock"), str(runner)], capture_output=True, text=True,
                          check=False)
    assert held.returncode == 75 and "this one is skipped" in held.stdout
    assert not (tmp_path / "calls").exists()


def test_the_systemd_timer_spreads_the_start_and_the_unit_runs_the_runner_as_the_drill_user():
    timer = _render("quankey-drill.timer.j2", restore_drill_splay_minutes=45)
    assert "OnCalendar=Sun *-*-* 05:00:00\n" in timer and "RandomizedDelaySec=45min\n" in timer
    assert "RandomizedDelaySec" not in _render("quankey-drill.timer.j2", restore_drill_splay_minutes=0)
    unit = _render("quankey-drill.service.j2")
    assert "User=quankey-backup\n" in unit and "ExecStart=/usr/local/sbin/quankey-drill-run\n" in unit
    assert "SuccessExitStatus=75\n" in unit and "StandardOutput=append:/var/log/quankey/drill.log\n" in unit
    assert "ProtectHome=yes\n" in unit


def test_the_runner_then_drills_each_pitr_host_point_in_time_and_a_failure_is_its_exit(tmp_path):
    runner = _runner(tmp_path, restore_drill_pitr_hosts=["db1", "db 2"], restore_drill_pitr_scratch_dir="/srv/scratch")
    assert "# Then the cluster of db1, db 2 point-in-time (drill --pitr)" in runner.read_text()
    done = subprocess.run([str(runner)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert _calls(tmp_path) == ["DB_NAME= --env-file /etc/quankey/drill.env drill --all-hosts",
                                "DB_NAME= --env-file /etc/quankey/drill.env drill --pitr --host db1 --scratch-dir /srv/scratch",
                                "DB_NAME= --env-file /etc/quankey/drill.env drill --pitr --host db 2 --scratch-dir /srv/scratch"]
    (tmp_path / "quankey-backup").write_text("#!/bin/sh\ncase \"$*\" in *--pitr*) exit 2;; esac\n")
    assert subprocess.run([str(runner)], capture_output=True, text=True, check=False).returncode == 2


def test_a_pitr_scratch_directory_outside_the_private_tmp_is_writable_for_the_unit():
    def paths(**overrides):
        unit = _render("quankey-drill.service.j2", **overrides)
        return unit.split("ReadWritePaths=")[1].split("\n")[0]
    assert paths() == paths(restore_drill_pitr_hosts=["db1"]) == paths(restore_drill_pitr_scratch_dir="/srv/scratch")
    assert paths(restore_drill_pitr_hosts=["db1"], restore_drill_pitr_scratch_dir="/srv/scratch").endswith(" /srv/scratch")


def _drill_vars():
    with open(os.path.join(ROLE_DIR, "vars", "main.yml")) as handle:
        return yaml.safe_load(handle)


def test_a_dump_drill_target_whose_inventory_kind_is_physical_is_found_and_refused():
    environment = jinja2.Environment(undefined=jinja2.StrictUndefined)
    environment.filters.update(AnsibleCoreFilters().filters())
    environment.filters.update(AnsibleMathFilters().filters())  # zip
    environment.tests.update(AnsibleCoreTests().tests())
    hostvars = {"db1.example.com": {"pg_backup_kind": "physical"}, "db2.example.com": {"pg_backup_kind": "both"},
                "db3.example.com": {"pg_backup_kind": "physical", "pg_backup_host_id": "ledger"},
                "drill1.example.com": {}}
    variables = _drill_vars()
    physical = environment.from_string(variables["_restore_drill_physical_hosts"]).render(
        groups={"all": list(hostvars)}, hostvars=hostvars).strip()
    physical_hosts = [{"key": name, "value": hostvars[name]} for name in ("db1.example.com", "db3.example.com")]
    ids = environment.from_string(variables["_restore_drill_physical_host_ids"]).render(
        _restore_drill_physical_hosts=physical_hosts).strip()
    assert "db1.example.com" in physical and "db3.example.com" in physical and "db2" not in physical
    assert ids == "['ledger', 'db1']"
    (check,) = [task for task in yaml.safe_load(open(os.path.join(ROLE_DIR, "tasks", "preflight.yml")))
                if task["name"] == "Check that no dump drill targets a physical-only host (drill it point-in-time instead)"]
    targets = [{"host": "db1", "database": "app"}, {"host": "db2", "database": "app"}, {"host": "db1", "database": "x"}]
    found = environment.from_string(check["vars"]["__restore_drill_physical_targets"]).render(
        restore_drill_targets=targets, _restore_drill_physical_host_ids=["db1", "ledger"]).strip()
    assert found == "['db1']"
    assert "move it from restore_drill_targets to restore_drill_pitr_hosts" in check["ansible.builtin.assert"]["fail_msg"]
