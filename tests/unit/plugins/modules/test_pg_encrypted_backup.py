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
    assert (settings.db_host, settings.db_port, settings.db_user, settings.db_sslmode) == ("localhost", 5432, "postgres", "prefer")
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


def test_db_bucket_and_key_are_required(run_module):
    result = run_module(module, {})
    assert result["failed"] is True
    assert result["msg"] == "missing required arguments: bucket, db"  # the key needed depends on `encryption`


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
