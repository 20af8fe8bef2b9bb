# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""backup_info: filters to the engine, read-only results."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime


from ansible_collections.quankey.backup.plugins.module_utils import config
from ansible_collections.quankey.backup.plugins.module_utils.errors import NotFoundError, StorageError
from ansible_collections.quankey.backup.plugins.modules import backup_info as module

FOUND = {"backups": [{"name": "q_backup_20250809_030000"}, {"name": "q_backup_20250808_030000"}], "orphans": []}


def test_lists_this_host_and_database_by_default_like_the_host_command(run_module, recorder, monkeypatch):
    find = recorder(result=FOUND)
    monkeypatch.setattr(module.inventory, "find_backups", find)
    result = run_module(module, {"bucket": "backups"})
    assert find.settings.bucket == "backups"
    assert find.kwargs == {"host": config.default_host_id(), "db": None, "since": None, "limit": 0, "details": False,
                           "include_deleted": False}
    assert result["changed"] is False
    assert result["backups"] == FOUND["backups"] and result["orphans"] == []
    run_module(module, {"bucket": "backups", "host_id": "db1", "db": "q"})
    assert find.calls[-1][1]["host"] == "db1" and find.calls[-1][1]["db"] == "q"


def test_all_lists_the_whole_bucket_narrowed_only_by_options(run_module, recorder, monkeypatch):
    find = recorder(result=FOUND)
    monkeypatch.setattr(module.inventory, "find_backups", find)
    monkeypatch.setenv("DB_NAME", "env_db")  # the host's database: not a filter of `all`, as `list --all`
    run_module(module, {"bucket": "backups", "host_id": "db1", "all": True})
    assert (find.calls[-1][1]["host"], find.calls[-1][1]["db"]) == (None, None)
    run_module(module, {"bucket": "backups", "all_hosts": True, "db": "q", "host": "db2"})
    assert (find.calls[-1][1]["host"], find.calls[-1][1]["db"]) == ("db2", "q")


def test_filters_reach_the_engine(run_module, recorder, monkeypatch):
    find = recorder(result=FOUND)
    monkeypatch.setattr(module.inventory, "find_backups", find)
    run_module(module, {"bucket": "backups", "host": "db1", "db": "q", "since": "2025-08-01", "limit": "3",
                        "details": "yes", "include_deleted": True})
    assert find.kwargs == {"host": "db1", "db": "q", "since": datetime.datetime(2025, 8, 1, tzinfo=datetime.timezone.utc),
                           "limit": 3, "details": True, "include_deleted": True}


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


class _Record:
    def summary(self):
        return {"name": "q_backup_20250808_030000", "host": "db1", "database": "q", "signature": "unsigned",
                "trusted": False}


def test_backup_or_before_return_the_one_backup_a_restore_would_select(run_module, recorder, monkeypatch):
    select = recorder(result=_Record())
    find = recorder(result=FOUND)
    monkeypatch.setattr(module.inventory, "select", select)
    monkeypatch.setattr(module.inventory, "find_backups", find)
    monkeypatch.setattr(module.wiring, "open_store", lambda settings: "the store")
    result = run_module(module, {"bucket": "backups", "host": "db1", "db": "q", "before": "2025-08-09",
                                 "allow_seed": True, "limit": 1})
    assert find.calls == []
    assert select.calls[0][0][1] == "the store"
    assert select.kwargs == {"backup": "latest", "before": datetime.datetime(2025, 8, 9, tzinfo=datetime.timezone.utc),
                             "host": "db1", "db": "q", "allow_seed": True}
    assert result["backups"] == [_Record().summary()] and result["orphans"] == [] and result["changed"] is False
    select = recorder(result=_Record())
    monkeypatch.setattr(module.inventory, "select", select)
    run_module(module, {"bucket": "backups", "backup": "q_backup_20250808_030000"}, check_mode=True)
    assert select.kwargs == {"backup": "q_backup_20250808_030000", "before": None, "host": None, "db": None,
                             "allow_seed": False}


def test_no_backup_to_select_fails_with_the_engine_words(run_module, recorder, monkeypatch):
    error = NotFoundError("no backup was taken before 2020-01-01T00:00:00Z (oldest: q_backup_20250808_030000)")
    monkeypatch.setattr(module.inventory, "select", recorder(error=error))
    monkeypatch.setattr(module.wiring, "open_store", lambda settings: None)
    result = run_module(module, {"bucket": "backups", "db": "q", "before": "2020-01-01"})
    assert result["failed"] is True and result["msg"] == str(error) and result["error"]["exit_code"] == 7
    result = run_module(module, {"bucket": "backups", "db": "q", "before": "soonish"})
    assert result["failed"] is True and "before 'soonish' is not a time I understand" in result["msg"]
