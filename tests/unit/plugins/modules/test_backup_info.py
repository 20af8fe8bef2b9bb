# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""backup_info: filters to the engine, read-only results."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime


from ansible_collections.quankey.backup.plugins.module_utils.errors import StorageError
from ansible_collections.quankey.backup.plugins.modules import backup_info as module

FOUND = {"backups": [{"name": "q_backup_20250809_030000"}, {"name": "q_backup_20250808_030000"}], "orphans": []}


def test_lists_the_whole_bucket_by_default(run_module, recorder, monkeypatch):
    find = recorder(result=FOUND)
    monkeypatch.setattr(module.inventory, "find_backups", find)
    result = run_module(module, {"bucket": "backups"})
    assert find.settings.bucket == "backups"
    assert find.kwargs == {"host": None, "db": None, "since": None, "limit": 0, "details": False}
    assert result["changed"] is False
    assert result["backups"] == FOUND["backups"] and result["orphans"] == []


def test_filters_reach_the_engine(run_module, recorder, monkeypatch):
    find = recorder(result=FOUND)
    monkeypatch.setattr(module.inventory, "find_backups", find)
    run_module(module, {"bucket": "backups", "host": "db1", "db": "q", "since": "2025-08-01", "limit": "3",
                        "details": "yes"})
    assert find.kwargs == {"host": "db1", "db": "q", "since": datetime.datetime(2025, 8, 1, tzinfo=datetime.timezone.utc),
                           "limit": 3, "details": True}


def test_db_comes_from_the_environment_like_the_host_command(run_module, recorder, monkeypatch):
    find = recorder(result=FOUND)
    monkeypatch.setattr(module.inventory, "find_backups", find)
    monkeypatch.setenv("DB_NAME", "env_db")
    monkeypatch.setenv("S3_BUCKET", "env-bucket")
    run_module(module, {})
    assert find.kwargs["db"] == "env_db"
    assert find.settings.bucket == "env-bucket"


def test_check_mode_lists_too(run_module, recorder, monkeypatch):
    find = recorder(result=FOUND)
    monkeypatch.setattr(module.inventory, "find_backups", find)
    result = run_module(module, {"bucket": "backups"}, check_mode=True)
    assert len(find.calls) == 1 and result["backups"] == FOUND["backups"]


def test_a_storage_failure_is_the_engine_message(run_module, recorder, monkeypatch):
    error = StorageError("S3 access denied for s3://backups/metadata/ (ListObjectsV2): check the IAM policy")
    monkeypatch.setattr(module.inventory, "find_backups", recorder(error=error))
    result = run_module(module, {"bucket": "backups"})
    assert result["failed"] is True
    assert result["msg"] == str(error)
    assert result["error"]["exit_code"] == 5


def test_a_bad_since_fails_before_listing(run_module, recorder, monkeypatch):
    find = recorder(result=FOUND)
    monkeypatch.setattr(module.inventory, "find_backups", find)
    result = run_module(module, {"bucket": "backups", "since": "yesterday-ish"})
    assert result["failed"] is True and "since 'yesterday-ish' is not a time I understand" in result["msg"]
    assert find.calls == []


def test_details_return_each_backups_verdict_as_the_engine_gives_it(run_module, recorder, monkeypatch):
    found = {"backups": [
        {"name": "q_backup_20250809_030000", "signature": "valid (key qk1-3f2a9c0d1e4b5a69)", "trusted": True},
        {"name": "q_backup_20240101_030000", "layout": "seed", "signature": "unsigned (made by the seed's scripts)",
         "trusted": False}], "orphans": []}
    find = recorder(result=found)
    monkeypatch.setattr(module.inventory, "find_backups", find)
    result = run_module(module, {"bucket": "backups", "details": True, "signing_key": "c2lnbmluZyBrZXkgb2YgdGhlIHRlc3QhISEhISEhISE="})
    assert find.settings.signing_key == "c2lnbmluZyBrZXkgb2YgdGhlIHRlc3QhISEhISEhISE="
    assert [(item["signature"], item["trusted"]) for item in result["backups"]] == [
        ("valid (key qk1-3f2a9c0d1e4b5a69)", True), ("unsigned (made by the seed's scripts)", False)]
    assert "c2lnbmluZyBrZXkgb2YgdGhlIHRlc3QhISEhISEhISE=" not in str(result)  # no_log
