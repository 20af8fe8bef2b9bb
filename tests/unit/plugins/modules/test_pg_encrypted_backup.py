# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""pg_encrypted_backup: options to Settings, check mode to plan_backup, results and errors."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json

from ansible_collections.quankey.backup.plugins.module_utils.adapters import s3 as storage
from ansible_collections.quankey.backup.plugins.module_utils.formats import compression
from ansible_collections.quankey.backup.plugins.module_utils.errors import PostgresError
from ansible_collections.quankey.backup.plugins.modules import pg_encrypted_backup as module

KEY = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
ARGS = {"db": "quankey_prod", "bucket": "backups", "encryption_key": KEY}
RESULT = {"name": "quankey_prod_backup_20250809_030000", "object_key": "backups/postgresql/db1/quankey_prod/x.encrypted",
          "size_bytes": 1234, "checksum_sha256": "ab" * 32, "key_id": "qk1-0123456789abcdef"}


class _Plan:
    def describe(self):
        return {"name": "quankey_prod_backup_20250809_030000", "object_key": "k", "key_id": "qk1-0123456789abcdef"}


def test_backup_maps_every_option_to_the_settings(run_module, recorder, monkeypatch):
    run = recorder(result=RESULT)
    monkeypatch.setattr(module.backup, "run_backup", run)
    result = run_module(module, dict(
        ARGS, login_host="db.internal", login_port="5433", login_user="backup", login_password="pg-secret",
        ssl_mode="require", maintenance_db="template1", prefix="prod", host_id="db1", region="eu-central-1",
        endpoint_url="http://127.0.0.1:9000", access_key="AKIATEST", secret_key="s3-secret", session_token="tok",
        name="nightly", compression="gzip", storage_class="STANDARD", retention_days=90))
    settings = run.settings
    assert (settings.db_host, settings.db_port, settings.db_user, settings.db_password) == ("db.internal", 5433, "backup", "pg-secret")
    assert (settings.db_sslmode, settings.db_maintenance_db, settings.db_name) == ("require", "template1", "quankey_prod")
    assert (settings.bucket, settings.prefix, settings.host, settings.region) == ("backups", "prod/", "db1", "eu-central-1")
    assert (settings.endpoint_url, settings.access_key, settings.secret_key, settings.session_token) == (
        "http://127.0.0.1:9000", "AKIATEST", "s3-secret", "tok")
    assert (settings.name, settings.compression, settings.storage_class, settings.retention_days) == (
        "nightly", "gzip", "STANDARD", 90)
    assert settings.encryption_key == KEY
    assert result["changed"] is True
    assert result["backup"] == RESULT


def test_defaults_are_the_engine_defaults(run_module, recorder, monkeypatch):
    run = recorder(result=RESULT)
    monkeypatch.setattr(module.backup, "run_backup", run)
    run_module(module, ARGS)
    settings = run.settings
    assert (settings.db_host, settings.db_port, settings.db_user, settings.db_sslmode) == ("localhost", 5432, "postgres", None)
    assert (settings.compression, settings.encryption, settings.storage_class, settings.retention_days) == (
        "zstd", "aes-256-gcm", "STANDARD_IA", 30)
    assert settings.prefix == "" and settings.name == "quankey_prod"


def test_unix_socket_replaces_the_host(run_module, recorder, monkeypatch):
    run = recorder(result=RESULT)
    monkeypatch.setattr(module.backup, "run_backup", run)
    run_module(module, dict(ARGS, login_host="ignored", login_unix_socket="/run/postgresql"))
    assert run.settings.db_host == "/run/postgresql"


def test_options_fall_back_to_the_host_command_variables(run_module, recorder, monkeypatch):
    run = recorder(result=RESULT)
    monkeypatch.setattr(module.backup, "run_backup", run)
    for name, value in {"DB_NAME": "from_env", "DB_PORT": "6543", "PGPASSWORD": "env-pw", "S3_BUCKET": "env-bucket",
                        "BACKUP_ENCRYPTION_KEY": KEY, "AWS_ACCESS_KEY_ID": "AKIAENV", "S3_ENDPOINT_URL": "http://s3",
                        "BACKUP_COMPRESSION": "none", "BACKUP_RETENTION_DAYS": "7"}.items():
        monkeypatch.setenv(name, value)
    result = run_module(module, {"login_user": "explicit"})
    settings = run.settings
    assert (settings.db_name, settings.db_port, settings.db_password, settings.db_user) == ("from_env", 6543, "env-pw", "explicit")
    assert (settings.bucket, settings.access_key, settings.endpoint_url) == ("env-bucket", "AKIAENV", "http://s3")
    assert (settings.compression, settings.retention_days) == ("none", 7)
    assert "env-pw" not in json.dumps(result)


def test_an_option_beats_its_environment_variable(run_module, recorder, monkeypatch):
    run = recorder(result=RESULT)
    monkeypatch.setattr(module.backup, "run_backup", run)
    monkeypatch.setenv("S3_BUCKET", "env-bucket")
    run_module(module, ARGS)
    assert run.settings.bucket == "backups"


def test_check_mode_plans_and_writes_nothing(run_module, recorder, monkeypatch):
    plan = recorder(result=_Plan())
    run = recorder(result=RESULT)
    monkeypatch.setattr(module.backup, "plan_backup", plan)
    monkeypatch.setattr(module.backup, "run_backup", run)
    result = run_module(module, ARGS, check_mode=True)
    assert run.calls == []
    assert plan.settings.db_name == "quankey_prod"
    assert result["changed"] is True
    assert result["backup"] == _Plan().describe()


def test_secrets_never_reach_the_output(run_module, recorder, monkeypatch):
    monkeypatch.setattr(module.backup, "run_backup", recorder(result=RESULT))
    result = run_module(module, dict(ARGS, login_password="pg-secret-1", secret_key="s3-secret-1",
                                     session_token="token-secret-1", access_key="AKIASHOWN",
                                     _ansible_inject_invocation=True))
    text = json.dumps(result)
    for secret in ("pg-secret-1", "s3-secret-1", "token-secret-1", KEY):
        assert secret not in text
    shown = result["invocation"]["module_args"]
    assert shown["login_password"] == shown["encryption_key"] == "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER"
    assert shown["access_key"] == "AKIASHOWN"  # an access key id is not a secret (no_log=False)


def test_an_engine_failure_is_its_message_without_traceback(run_module, recorder, monkeypatch):
    error = PostgresError("password authentication failed for user 'backup' on localhost:5432: check PGPASSWORD",
                          step="connect")
    monkeypatch.setattr(module.backup, "run_backup", recorder(error=error))
    result = run_module(module, ARGS)  # tracebacks as Ansible is configured by default
    assert result["failed"] is True
    assert result["msg"] == "connect failed: password authentication failed for user 'backup' on localhost:5432: check PGPASSWORD"
    assert result["error"] == {"type": "PostgresError", "step": "connect", "exit_code": 4}
    assert "exception" not in result


def test_an_unexpected_failure_keeps_the_traceback(run_module, recorder, monkeypatch):
    monkeypatch.setattr(module.backup, "run_backup", recorder(error=ZeroDivisionError("boom")))
    result = run_module(module, dict(ARGS, _ansible_tracebacks_for=["error"]))
    assert result["failed"] is True
    assert result["msg"].startswith("backup failed unexpectedly (ZeroDivisionError: boom)")
    assert "Traceback" in result["exception"] and "ZeroDivisionError: boom" in result["exception"]


def test_invalid_settings_fail_with_the_engine_message(run_module, recorder, monkeypatch):
    run = recorder(result=RESULT)
    monkeypatch.setattr(module.backup, "run_backup", run)
    result = run_module(module, dict(ARGS, host_id="bad/host"))
    assert result["failed"] is True
    assert "the host_id option 'bad/host' may hold only letters" in result["msg"]
    assert result["error"]["type"] == "ConfigError"
    assert run.calls == []


def test_db_and_bucket_are_required_by_the_engine_naming_the_options(run_module):
    result = run_module(module, {})  # not by the argument spec: they may come from the environment or the env file
    assert result["failed"] is True
    assert result["msg"] == ("the db option is not set: name the database whose backups to take or use (e.g. db: "
                             "quankey_prod, or DB_NAME=quankey_prod in the env file)")
    result = run_module(module, {"db": "quankey_prod"})
    assert result["msg"].startswith("the bucket option is not set: name the backup bucket")
    assert result["error"]["exit_code"] == 3


def test_settings_come_from_the_env_file_and_an_option_overrides_it(run_module, recorder, monkeypatch, tmp_path):
    env_file = tmp_path / "backup.env"
    env_file.write_text("DB_NAME=file_db\nS3_BUCKET=file-bucket\nBACKUP_ENCRYPTION_KEY=%s\nPGPASSWORD=file-pg-secret\n"
                        "BACKUP_RETENTION_DAYS=14\nBACKUP_COMPRESSION=gzip\n" % KEY)
    env_file.chmod(0o600)
    run = recorder(result=dict(RESULT, echoed="file-pg-secret"))
    monkeypatch.setattr(module.backup, "run_backup", run)
    result = run_module(module, {"env_file": str(env_file), "retention_days": 60})
    settings = run.settings
    assert (settings.db_name, settings.bucket, settings.encryption_key, settings.db_password) == (
        "file_db", "file-bucket", KEY, "file-pg-secret")
    assert (settings.retention_days, settings.compression) == (60, "gzip")
    assert result["changed"] is True
    assert "file-pg-secret" not in json.dumps(result) and KEY not in json.dumps(result)  # masked like no_log options


def test_a_bad_env_file_value_names_the_variable_and_the_file(run_module, tmp_path):
    env_file = tmp_path / "backup.env"
    env_file.write_text("DB_NAME=d\nS3_BUCKET=b\nBACKUP_RETENTION_DAYS=0\n")
    env_file.chmod(0o640)
    result = run_module(module, {"env_file": str(env_file)})
    assert result["failed"] is True
    assert result["msg"] == "BACKUP_RETENTION_DAYS in %s must be between 1 and 36500, got 0" % env_file
    assert any("chmod 0600" in str(warning) for warning in result.get("warnings", []))


def test_choices_are_enforced(run_module):
    result = run_module(module, dict(ARGS, compression="lz4"))
    assert result["failed"] is True
    assert "compression" in result["msg"] and "zstd, gzip, none" in result["msg"]


def test_missing_boto3_fails_the_standard_way(run_module, monkeypatch):
    monkeypatch.setattr(storage, "HAS_BOTO3", False)
    monkeypatch.setattr(storage, "BOTO3_IMPORT_ERROR", "Traceback: No module named 'boto3'")
    result = run_module(module, dict(ARGS, _ansible_tracebacks_for=["error"]))
    assert result["failed"] is True
    assert "Failed to import the required Python library (boto3)" in result["msg"]
    assert result["exception"] == "Traceback: No module named 'boto3'"


def test_zstandard_is_needed_only_for_zstd(run_module, recorder, monkeypatch):
    monkeypatch.setattr(compression, "HAS_ZSTANDARD", False)
    monkeypatch.setattr(compression, "ZSTANDARD_IMPORT_ERROR", "no zstandard")
    monkeypatch.setattr(module.backup, "run_backup", recorder(result=RESULT))
    assert "(zstandard)" in run_module(module, ARGS)["msg"]
    assert run_module(module, dict(ARGS, compression="gzip"))["changed"] is True


PRUNED = {"deleted": ["quankey_prod_backup_20250101_030000"], "kept": ["quankey_prod_backup_20250809_030000"],
          "retention_days": 30, "min_keep": 3, "dry_run": False, "orphans_deleted": [], "uploads_aborted": [],
          "staging_databases_dropped": [], "restore_logins_dropped": [], "leftovers": {}}


def test_the_backup_runs_under_the_run_lock_and_then_prunes_under_it_too(run_module, recorder, monkeypatch, tmp_path):
    lock_file = str(tmp_path / "backup.lock")
    held = []

    def held_now(*args, **kwargs):
        try:
            module.hostlock.RunLock(lock_file, 0).acquire()
        except module.hostlock.LockBusyError:
            held.append(True)
            return dict(RESULT) if not held[1:] else dict(PRUNED)
        raise AssertionError("the run lock was not held")

    monkeypatch.setattr(module.backup, "run_backup", held_now)
    monkeypatch.setattr(module.prune, "run_prune", held_now)
    result = run_module(module, dict(ARGS, lock_file=lock_file, lock_wait=5, prune=True))
    assert held == [True, True]
    assert result["backup"] == RESULT and result["pruned"] == PRUNED
    assert result["lock_waited_seconds"] < 5
    module.hostlock.RunLock(lock_file, 0).acquire().release()  # and let go afterwards


def test_a_busy_run_lock_fails_naming_the_file_and_the_wait(run_module, recorder, monkeypatch, tmp_path):
    lock_file = str(tmp_path / "backup.lock")
    run = recorder(result=RESULT)
    monkeypatch.setattr(module.backup, "run_backup", run)
    with module.hostlock.RunLock(lock_file, 0):  # a scheduled run holds it
        result = run_module(module, dict(ARGS, lock_file=lock_file, lock_wait=0.3))
    assert result["failed"] is True and run.calls == []
    assert lock_file in result["msg"] and "0.3 s" in result["msg"] and "(lock_wait)" in result["msg"]
    assert result["error"] == {"type": "LockBusyError", "step": "lock", "exit_code": 8}


def test_without_a_lock_file_no_lock_is_taken_and_nothing_is_pruned(run_module, recorder, monkeypatch):
    prune = recorder(result=PRUNED)
    monkeypatch.setattr(module.backup, "run_backup", recorder(result=RESULT))
    monkeypatch.setattr(module.prune, "run_prune", prune)
    result = run_module(module, ARGS)
    assert prune.calls == [] and "pruned" not in result and "lock_waited_seconds" not in result


def test_check_mode_checks_the_lock_and_says_what_prune_would_delete(run_module, recorder, monkeypatch, tmp_path):
    prune = recorder(result=dict(PRUNED, dry_run=True))
    monkeypatch.setattr(module.backup, "plan_backup", recorder(result=_Plan()))
    monkeypatch.setattr(module.prune, "run_prune", prune)
    result = run_module(module, dict(ARGS, lock_file=str(tmp_path / "backup.lock"), prune=True), check_mode=True)
    assert result["pruned"]["dry_run"] is True and prune.kwargs == {"dry_run": True}
    assert not (tmp_path / "backup.lock").exists()  # checked, not created
    result = run_module(module, dict(ARGS, lock_file=str(tmp_path / "no" / "backup.lock")), check_mode=True)
    assert result["failed"] is True and "cannot create the run lock" in result["msg"]


def test_the_calendar_retention_options_reach_prune_and_a_wrong_one_names_the_option(run_module, recorder, monkeypatch):
    prune = recorder(result=dict(PRUNED, backups=[], keep_daily=7, keep_weekly=0, keep_monthly=12, keep_yearly=0))
    monkeypatch.setattr(module.backup, "run_backup", recorder(result=RESULT))
    monkeypatch.setattr(module.prune, "run_prune", prune)
    result = run_module(module, dict(ARGS, prune=True, keep_daily=7, keep_monthly=12))
    settings = prune.settings
    assert (settings.keep_daily, settings.keep_weekly, settings.keep_monthly, settings.keep_yearly) == (7, 0, 12, 0)
    assert result["pruned"]["keep_monthly"] == 12
    backup = recorder(result=RESULT)
    monkeypatch.setattr(module.backup, "run_backup", backup)
    result = run_module(module, dict(ARGS, prune=True, keep_yearly=-1))
    assert result["failed"] is True and backup.calls == []
    assert result["msg"].startswith("the keep_yearly option must be between 0 and 100000, got -1: give how many of the "
                                    "most recent years (UTC) keep their newest good backup")


def test_the_object_lock_options_reach_the_backup_and_a_wrong_mode_names_the_option(run_module, recorder, monkeypatch):
    backup = recorder(result=RESULT)
    monkeypatch.setattr(module.backup, "run_backup", backup)
    run_module(module, dict(ARGS, object_lock_mode="compliance", object_lock_days=45))
    assert (backup.settings.object_lock_mode, backup.settings.object_lock_days) == ("compliance", 45)
    result = run_module(module, dict(ARGS, object_lock_mode="sticky"))
    assert result["failed"] is True and "object_lock_mode" in result["msg"]
    assert "governance, compliance" in result["msg"]
