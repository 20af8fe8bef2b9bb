# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""s3_backup_restore: selection options, check mode as a full verification, refusals and key errors."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime

from ansible_collections.quankey.backup.plugins.module_utils import config
from ansible_collections.quankey.backup.plugins.module_utils.errors import ConfigError, IntegrityError, RefusedError, WrongKeyError
from ansible_collections.quankey.backup.plugins.modules import s3_backup_restore as module

KEY = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
ARGS = {"db": "quankey_prod", "bucket": "backups", "encryption_key": KEY}
RESTORED = {"name": "quankey_prod_backup_20250809_030000", "target_db": "quankey_prod_restored_20250809_030000",
            "replaced_db": None, "table_count": 3, "expected_table_count": 3, "checksum_ok": True}


def test_restore_latest_into_the_default_target(run_module, recorder, monkeypatch):
    restore = recorder(result=RESTORED)
    monkeypatch.setattr(module.restore, "run_restore", restore)
    result = run_module(module, ARGS)
    assert restore.settings.db_name == "quankey_prod"
    assert restore.kwargs == {"backup": "latest", "before": None, "host": None, "db": None, "target_db": None,
                              "force": False, "no_owner": False, "allow_unsigned": False, "allow_seed": False,
                              "as_admin": False, "with_globals": False}
    assert restore.settings.restore_role == config.DEFAULT_RESTORE_ROLE
    assert result["changed"] is True
    assert result["restore"] == RESTORED
    assert "verification" not in result


def test_selection_target_and_flags_reach_the_engine(run_module, recorder, monkeypatch):
    restore = recorder(result=RESTORED)
    monkeypatch.setattr(module.restore, "run_restore", restore)
    run_module(module, dict(ARGS, backup="quankey_prod_backup_20250809_030000", before="2025-08-10T00:00:00+02:00",
                            target_db="incident", force=True, no_owner=True, source_host="db2", source_db="other",
                            allow_unsigned=True, allow_seed=True, restore_as_admin=True, with_globals=True))
    assert restore.kwargs == {
        "backup": "quankey_prod_backup_20250809_030000",
        "before": datetime.datetime(2025, 8, 9, 22, 0, 0, tzinfo=datetime.timezone.utc),
        "host": "db2", "db": "other", "target_db": "incident", "force": True, "no_owner": True, "allow_unsigned": True,
        "allow_seed": True, "as_admin": True, "with_globals": True}


def test_source_db_alone_is_enough(run_module, recorder, monkeypatch):
    restore = recorder(result=RESTORED)
    monkeypatch.setattr(module.restore, "run_restore", restore)
    run_module(module, {"source_db": "other", "bucket": "b", "encryption_key": KEY})
    assert restore.kwargs["db"] == "other"
    assert restore.settings.db_name is None


def test_one_of_db_and_source_db_is_required(run_module):
    result = run_module(module, {"bucket": "b", "encryption_key": KEY})  # db may come from the env file: the engine asks
    assert result["failed"] is True
    assert result["msg"] == ("the db option is not set: name the database whose backups to take or use (e.g. db: "
                             "quankey_prod, or DB_NAME=quankey_prod in the env file)")
    assert result["error"]["exit_code"] == 3


def test_a_bad_time_fails_with_the_engine_message(run_module, recorder, monkeypatch):
    restore = recorder(result=RESTORED)
    monkeypatch.setattr(module.restore, "run_restore", restore)
    result = run_module(module, dict(ARGS, before="last tuesday"))
    assert result["failed"] is True
    assert result["msg"].startswith("before 'last tuesday' is not a time I understand")
    assert restore.calls == []


def test_check_mode_verifies_instead_of_restoring(run_module, recorder, monkeypatch):
    restore = recorder(result=RESTORED)
    plan = {"name": "quankey_prod_backup_20250809_030000", "target_db": "quankey_prod_restored_20250809_030000"}
    verification = {"checksum_ok": True, "decryption_ok": True, "table_count": 3}
    preview = recorder(result=(plan, verification))
    monkeypatch.setattr(module.restore, "run_restore", restore)
    monkeypatch.setattr(module.restore, "preview_restore", preview)
    result = run_module(module, dict(ARGS, target_db="t", source_host="db1"), check_mode=True)
    assert restore.calls == []
    assert preview.kwargs == {"backup": "latest", "before": None, "host": "db1", "db": None, "target_db": "t",
                              "force": False, "allow_unsigned": False, "allow_seed": False, "as_admin": False,
                              "with_globals": False}
    assert result["changed"] is True
    assert result["restore"] == plan
    assert result["verification"] == verification


def test_an_existing_target_is_refused_with_the_engine_words(run_module, recorder, monkeypatch):
    error = RefusedError("database 'quankey_prod' already exists on localhost:5432: restore under another name with "
                         "--target-db, or pass --force to replace it (the old one is kept, renamed)")
    monkeypatch.setattr(module.restore, "run_restore", recorder(error=error))
    result = run_module(module, dict(ARGS, target_db="quankey_prod"))
    assert result["failed"] is True
    assert result["msg"] == str(error)
    assert result["error"] == {"type": "RefusedError", "step": None, "exit_code": 8}
    assert "exception" not in result


def test_a_wrong_key_names_both_key_ids(run_module, recorder, monkeypatch):
    error = WrongKeyError("this backup's data key is wrapped with key qk1-aaaaaaaaaaaaaaaa; the key given is "
                          "qk1-bbbbbbbbbbbbbbbb: set BACKUP_ENCRYPTION_KEY to the key that made this backup", step="decrypt")
    monkeypatch.setattr(module.restore, "preview_restore", recorder(error=error))
    result = run_module(module, ARGS, check_mode=True)
    assert result["failed"] is True
    assert result["msg"].startswith("decrypt failed: this backup's data key is wrapped with key qk1-aaaaaaaaaaaaaaaa")
    assert result["error"]["type"] == "WrongKeyError"


def test_no_key_is_required_up_front_as_the_backup_decides_which(run_module, recorder, monkeypatch):
    # an aes-256-gcm backup needs a master key, a hybrid-pq one the identity file: the engine names the one missing
    restore = recorder(result=RESTORED)
    monkeypatch.setattr(module.restore, "run_restore", restore)
    result = run_module(module, {"db": "d", "bucket": "b", "identity_file": "/etc/quankey/identity.key"})
    assert result["changed"] is True and restore.settings.identity_file == "/etc/quankey/identity.key"


def test_the_restore_role_reaches_the_engine_through_the_settings(run_module, recorder, monkeypatch):
    restore = recorder(result=dict(RESTORED, sql_ran_as="quankey_restore", owner="quankey", trusted=False))
    monkeypatch.setattr(module.restore, "run_restore", restore)
    result = run_module(module, dict(ARGS, source_host="db2", restore_role="quankey_restore"))
    assert restore.settings.restore_role == "quankey_restore"
    assert restore.settings.label("restore_role") == "the restore_role option"
    assert restore.kwargs["as_admin"] is False
    assert result["restore"]["sql_ran_as"] == "quankey_restore"


def test_the_restore_role_and_the_seed_consent_come_from_the_host_commands_variables(run_module, recorder, monkeypatch):
    restore = recorder(result=RESTORED)
    monkeypatch.setattr(module.restore, "run_restore", restore)
    monkeypatch.setenv("BACKUP_RESTORE_ROLE", "fleet_restore")
    monkeypatch.setenv("BACKUP_ALLOW_SEED", "true")
    run_module(module, ARGS)
    assert restore.settings.restore_role == "fleet_restore"
    assert restore.kwargs["allow_seed"] is True
    assert restore.kwargs["as_admin"] is False  # never from the environment: the task must say so


def test_check_mode_passes_the_seed_consent_and_returns_the_verdict(run_module, recorder, monkeypatch):
    plan = {"name": "quankey_backup_20240101_030000", "signature": "unsigned (made by the seed's scripts)",
            "trusted": False}
    verification = {"checksum_ok": True, "trusted": False, "layout": "seed"}
    preview = recorder(result=(plan, verification))
    monkeypatch.setattr(module.restore, "preview_restore", preview)
    result = run_module(module, dict(ARGS, allow_seed=True, restore_as_admin=True), check_mode=True)
    assert preview.kwargs["allow_seed"] is True
    assert preview.kwargs["as_admin"] is True  # the restore role is then neither checked nor needed, as in a real run
    assert result["restore"]["trusted"] is False and result["verification"]["layout"] == "seed"


def test_the_sql_runs_as_the_engines_default_restore_role_unless_told_otherwise(run_module, recorder, monkeypatch):
    restore = recorder(result=RESTORED)
    monkeypatch.setattr(module.restore, "run_restore", restore)
    run_module(module, dict(ARGS, source_host="db2"))
    assert restore.settings.restore_role == config.DEFAULT_RESTORE_ROLE == "quankey_restore"
    assert restore.kwargs["as_admin"] is False


def test_a_restore_role_that_is_the_login_is_refused_pointing_at_restore_as_admin(run_module, recorder, monkeypatch):
    error = ConfigError("the restore_role option is postgres, the login that restores (the login_user option): the "
                        "restore role must be a role of its own, e.g. quankey_restore; to run the backup's SQL as "
                        "postgres, pass --as-admin (restore_as_admin: true)")
    monkeypatch.setattr(module.restore, "run_restore", recorder(error=error))
    result = run_module(module, dict(ARGS, restore_role="postgres"))
    assert result["failed"] is True
    assert "the restore_role option" in result["msg"] and "restore_as_admin: true" in result["msg"]
    assert result["error"] == {"type": "ConfigError", "step": None, "exit_code": 3}


def test_metadata_with_a_field_the_format_does_not_define_is_refused(run_module, recorder, monkeypatch):
    error = IntegrityError("metadata object metadata/db1/quankey_prod/quankey_prod_backup_20250809_030000.meta has "
                           "field(s) 'layout', which metadata version 1 does not define: it was not written by "
                           "quankey-backup, or was modified; it is refused")
    monkeypatch.setattr(module.restore, "preview_restore", recorder(error=error))
    result = run_module(module, dict(ARGS, allow_unsigned=True, allow_seed=True), check_mode=True)
    assert result["failed"] is True
    assert "does not define" in result["msg"]
    assert result["error"]["exit_code"] == 6
