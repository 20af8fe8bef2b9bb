# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""backup_adopt: options to the engine, check mode as a dry run that reports what a real run would change,
delete_originals, the seed's passphrase and derivation, per-backup failures after the others."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import pytest

from ansible_collections.quankey.backup.plugins.module_utils.workflows import adopt
from ansible_collections.quankey.backup.plugins.module_utils.errors import AccessDeniedError
from ansible_collections.quankey.backup.plugins.modules import backup_adopt as module

KEY = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
SEED_PASSPHRASE = "32_byte_encryption_key"
ARGS = {"bucket": "backups", "host_id": "db1", "db": "quankey_prod", "encryption_key": KEY,
        "seed_passphrase": SEED_PASSPHRASE}


def _item(name, status, error=None, **extra):
    item = {"name": name, "timestamp": "2025-08-09T03:00:00Z",
            "seed_object_key": "backups/postgresql/%s.encrypted" % name,
            "object_key": "backups/postgresql/db1/quankey_prod/%s.encrypted" % name, "status": status}
    if status == adopt.ADOPTED:
        item.update(payload="custom", kdf="EVP_BytesToKey MD5 (openssl enc without -pbkdf2), passphrase BACKUP_SEED_PASSPHRASE",
                    table_count=6, copy_verified=True)
    if error:
        item.update(error="%s: %s" % (name, error), exit_code=6)
    item.update(extra)
    return item


def _summary(*items, dry_run=False, delete_originals=False):
    """What adopt.run_adopt returns for these backups."""
    counts = dict((status, sum(1 for item in items if item["status"] == status))
                  for status in (adopt.ADOPTED, adopt.WOULD_ADOPT, adopt.ALREADY, adopt.FAILED))
    failed = [item for item in items if item["status"] == adopt.FAILED]
    return {"database": "quankey_prod", "host": "db1", "bucket": "backups", "dry_run": dry_run,
            "delete_originals": delete_originals, "backups": list(items), "adopted": counts[adopt.ADOPTED],
            "would_adopt": counts[adopt.WOULD_ADOPT], "already_adopted": counts[adopt.ALREADY],
            "failed": counts[adopt.FAILED],
            "originals_deleted": sum(1 for item in items if item.get("original_deleted")),
            "changed": bool(counts[adopt.ADOPTED] or any(item.get("original_deleted") for item in items)),
            "exit_code": failed[0]["exit_code"] if failed else 0}


def test_adopts_this_hosts_seed_backups_with_the_seed_passphrase(run_module, recorder, monkeypatch):
    run = recorder(result=_summary(_item("quankey_backup_20250808_030000", adopt.ADOPTED),
                                   _item("quankey_backup_20250809_030000", adopt.ALREADY)))
    monkeypatch.setattr(adopt, "run_adopt", run)
    result = run_module(module, dict(ARGS, seed_kdf="evp-md5"))
    settings = run.settings
    assert (settings.bucket, settings.host, settings.db_name) == ("backups", "db1", "quankey_prod")
    assert settings.encryption_key == KEY
    assert (settings.seed_passphrase, settings.seed_kdf) == (SEED_PASSPHRASE, "evp-md5")
    assert (settings.compression, settings.storage_class) == ("zstd", "STANDARD_IA")
    assert run.kwargs == {"dry_run": False, "delete_originals": False}
    assert result["changed"] is True and result.get("failed", False) is False
    assert (result["adopted"], result["already_adopted"], result["failed_backups"]) == (1, 1, 0)
    assert result["would_delete_originals"] == 0
    assert SEED_PASSPHRASE not in str(result) and KEY not in str(result)


def test_check_mode_is_a_dry_run_that_reports_what_a_real_run_would_adopt(run_module, recorder, monkeypatch):
    run = recorder(result=_summary(_item("quankey_backup_20250809_030000", adopt.WOULD_ADOPT), dry_run=True))
    monkeypatch.setattr(adopt, "run_adopt", run)
    result = run_module(module, ARGS, check_mode=True)
    assert run.kwargs["dry_run"] is True
    assert result["changed"] is True and result["would_adopt"] == 1 and result["dry_run"] is True


def test_check_mode_with_delete_originals_reports_the_deletions_to_come(run_module, recorder, monkeypatch):
    run = recorder(result=_summary(_item("quankey_backup_20250809_030000", adopt.ALREADY, copy_verified=True),
                                   dry_run=True, delete_originals=True))
    monkeypatch.setattr(adopt, "run_adopt", run)
    result = run_module(module, dict(ARGS, delete_originals=True), check_mode=True)
    assert run.kwargs == {"dry_run": True, "delete_originals": True}
    assert result["changed"] is True and result["would_delete_originals"] == 1 and result["originals_deleted"] == 0


def test_delete_originals_reaches_the_engine_and_a_deletion_is_a_change(run_module, recorder, monkeypatch):
    run = recorder(result=_summary(_item("quankey_backup_20250809_030000", adopt.ALREADY, copy_verified=True,
                                         original_deleted=True), delete_originals=True))
    monkeypatch.setattr(adopt, "run_adopt", run)
    result = run_module(module, dict(ARGS, delete_originals=True))
    assert run.kwargs == {"dry_run": False, "delete_originals": True}
    assert result["changed"] is True and result["originals_deleted"] == 1 and result["would_delete_originals"] == 0


@pytest.mark.parametrize("items", [(), (_item("quankey_backup_20250809_030000", adopt.ALREADY),)],
                         ids=["no seed backups", "all adopted"])
def test_nothing_to_do_is_not_a_change(run_module, recorder, monkeypatch, items):
    monkeypatch.setattr(adopt, "run_adopt", recorder(result=_summary(*items)))
    assert run_module(module, ARGS)["changed"] is False
    monkeypatch.setattr(adopt, "run_adopt", recorder(result=_summary(*items, dry_run=True)))
    assert run_module(module, ARGS, check_mode=True)["changed"] is False


def test_a_backup_that_fails_fails_the_task_after_the_others(run_module, recorder, monkeypatch):
    bad = _item("quankey_backup_20250809_030000", adopt.FAILED, "checksum mismatch: the object was modified or corrupted")
    summary = _summary(_item("quankey_backup_20250808_030000", adopt.ADOPTED), bad)
    monkeypatch.setattr(adopt, "run_adopt", recorder(result=summary))
    result = run_module(module, ARGS)
    assert result["failed"] is True and result["changed"] is True
    assert result["msg"] == ("1 of 2 seed backups could not be adopted and were left as they were: "
                             "quankey_backup_20250809_030000: checksum mismatch: the object was modified or corrupted")
    assert result["failed_backups"] == 1 and result["exit_code"] == 6
    assert [item["status"] for item in result["backups"]] == ["adopted", "failed"]


def test_the_database_is_required(run_module):
    result = run_module(module, {"bucket": "backups"})
    assert result["failed"] is True and "db" in result["msg"]


def test_the_seed_settings_fall_back_to_the_host_commands_variables(run_module, recorder, monkeypatch):
    run = recorder(result=_summary())
    monkeypatch.setattr(adopt, "run_adopt", run)
    for name, value in (("DB_NAME", "quankey_prod"), ("BACKUP_SEED_PASSPHRASE", "from the env file"),
                        ("BACKUP_SEED_KDF", "pbkdf2-sha256:250000"), ("BACKUP_COMPRESSION", "gzip")):
        monkeypatch.setenv(name, value)
    run_module(module, {"bucket": "backups", "encryption_key": KEY})
    settings = run.settings
    assert (settings.db_name, settings.seed_passphrase, settings.seed_kdf, settings.compression) == (
        "quankey_prod", "from the env file", "pbkdf2-sha256:250000", "gzip")


def test_an_engine_error_fails_with_its_message(run_module, recorder, monkeypatch):
    error = AccessDeniedError("S3 access denied for s3://backups/metadata/ (ListObjectsV2): check the IAM policy")
    monkeypatch.setattr(adopt, "run_adopt", recorder(error=error))
    result = run_module(module, ARGS)
    assert result["failed"] is True and result["msg"] == str(error)
    assert result["error"] == {"type": "AccessDeniedError", "step": None, "exit_code": 5}
