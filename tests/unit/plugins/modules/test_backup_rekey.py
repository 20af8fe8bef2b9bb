# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""backup_rekey: options to the engine's scope and keyring, check mode as a dry run, per-backup failures."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import pytest

from ansible_collections.quankey.backup.plugins.module_utils import keys
from ansible_collections.quankey.backup.plugins.module_utils.workflows import rekey as rekey_workflow
from ansible_collections.quankey.backup.plugins.module_utils.errors import ConfigError
from ansible_collections.quankey.backup.plugins.modules import backup_rekey as module

KEY = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
OLD_KEY = "b2xkLW9sZC1vbGQtb2xkLW9sZC1vbGQtb2xkLW9sZC0="
ARGS = {"bucket": "backups", "host_id": "db1", "encryption_key": KEY}


def _item(name, status, error=None):
    item = {"name": name, "host": "db1", "database": "d", "metadata_key": "metadata/db1/d/%s.meta" % name,
            "from_key_id": "qk1-2222222222222222", "to_key_id": "qk1-1111111111111111", "status": status}
    if error:
        item.update(error="%s: %s" % (name, error), exit_code=6)
    return item


def _summary(*items, dry_run=False):
    counts = dict((status, sum(1 for item in items if item["status"] == status))
                  for status in (rekey_workflow.REKEYED, rekey_workflow.WOULD_REKEY, rekey_workflow.UNCHANGED, rekey_workflow.FAILED))
    failed = [item for item in items if item["status"] == rekey_workflow.FAILED]
    return {"active_key_id": "qk1-1111111111111111", "keyring_key_ids": ["qk1-1111111111111111", "qk1-2222222222222222"],
            "dry_run": dry_run, "bucket": "backups", "backups": list(items), "rekeyed": counts[rekey_workflow.REKEYED],
            "would_rekey": counts[rekey_workflow.WOULD_REKEY], "unchanged": counts[rekey_workflow.UNCHANGED], "failed": counts[rekey_workflow.FAILED],
            "changed": bool(counts[rekey_workflow.REKEYED] or counts[rekey_workflow.WOULD_REKEY]),
            "exit_code": failed[0]["exit_code"] if failed else 0}


def test_rekeys_this_hosts_backups_with_the_keyring(run_module, recorder, monkeypatch):
    rekey = recorder(result=_summary(_item("a", rekey_workflow.REKEYED), _item("b", rekey_workflow.UNCHANGED)))
    monkeypatch.setattr(module.rekey, "run_rekey", rekey)
    result = run_module(module, dict(ARGS, decryption_keys=[OLD_KEY], keyring_file="/etc/quankey/keyring"))
    settings = rekey.settings
    assert (settings.bucket, settings.host, settings.encryption_key) == ("backups", "db1", KEY)
    assert (settings.decryption_keys, settings.keyring_file) == ([OLD_KEY], "/etc/quankey/keyring")
    assert rekey.kwargs == {"host": None, "db": None, "everything": False, "dry_run": False}
    assert result["changed"] is True and result.get("failed", False) is False
    assert (result["rekeyed"], result["unchanged"], result["failed_backups"]) == (1, 1, 0)
    assert result["active_key_id"] == "qk1-1111111111111111"
    assert OLD_KEY not in str(result) and KEY not in str(result)


def test_check_mode_is_a_dry_run_that_reports_the_change(run_module, recorder, monkeypatch):
    rekey = recorder(result=_summary(_item("a", rekey_workflow.WOULD_REKEY), dry_run=True))
    monkeypatch.setattr(module.rekey, "run_rekey", rekey)
    result = run_module(module, ARGS, check_mode=True)
    assert rekey.kwargs["dry_run"] is True
    assert result["changed"] is True and result["would_rekey"] == 1 and result["dry_run"] is True


def test_nothing_to_do_is_not_a_change(run_module, recorder, monkeypatch):
    monkeypatch.setattr(module.rekey, "run_rekey", recorder(result=_summary(_item("a", rekey_workflow.UNCHANGED))))
    assert run_module(module, ARGS)["changed"] is False


@pytest.mark.parametrize("extra, kwargs", [
    ({"host": "db2", "db": "quankey_prod"}, {"host": "db2", "db": "quankey_prod", "everything": False}),
    ({"all_hosts": True}, {"host": None, "db": None, "everything": True}),
    ({"all_hosts": True, "db": "quankey_prod"}, {"host": None, "db": "quankey_prod", "everything": True}),
])
def test_scope_options_reach_the_engine(run_module, recorder, monkeypatch, extra, kwargs):
    rekey = recorder(result=_summary())
    monkeypatch.setattr(module.rekey, "run_rekey", rekey)
    run_module(module, dict(ARGS, **extra))
    assert dict(rekey.kwargs, dry_run=None) == dict(kwargs, dry_run=None)


def test_a_backup_that_fails_fails_the_task_after_the_others(run_module, recorder, monkeypatch):
    lost = _item("b", rekey_workflow.FAILED, "this backup's data key is wrapped with key qk1-3333333333333333; ...")
    summary = _summary(_item("a", rekey_workflow.REKEYED), lost)
    monkeypatch.setattr(module.rekey, "run_rekey", recorder(result=summary))
    result = run_module(module, ARGS)
    assert result["failed"] is True and result["changed"] is True
    assert result["msg"].startswith("1 of 2 backups could not be rekeyed and were left as they were: b: this backup's")
    assert result["failed_backups"] == 1 and result["exit_code"] == 6
    assert [item["status"] for item in result["backups"]] == ["rekeyed", "failed"]


def test_the_active_key_is_required(run_module):
    result = run_module(module, {"bucket": "backups"})
    assert result["failed"] is True and "encryption_key" in result["msg"]


def test_decryption_keys_from_the_environment_are_split(run_module, recorder, monkeypatch):
    rekey = recorder(result=_summary())
    monkeypatch.setattr(module.rekey, "run_rekey", rekey)
    monkeypatch.setenv("BACKUP_DECRYPTION_KEYS", "%s,%s" % (OLD_KEY, KEY))
    run_module(module, ARGS)
    assert keys.split_keys(rekey.settings.decryption_keys) == [OLD_KEY, KEY]


def test_an_engine_error_fails_with_its_message(run_module, recorder, monkeypatch):
    error = ConfigError("keyring file /k is mode 0644 and holds keys: refused until only its owner can read it: chmod 0600 /k")
    monkeypatch.setattr(module.rekey, "run_rekey", recorder(error=error))
    result = run_module(module, dict(ARGS, keyring_file="/k"))
    assert result["failed"] is True and result["msg"] == str(error)
    assert result["error"] == {"type": "ConfigError", "step": None, "exit_code": 3}
