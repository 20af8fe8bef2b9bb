# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""plugins/filter/engine.py: the roles ask the engine for key prefixes and for its verdict on their settings."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os

import pytest
import yaml

from ansible.errors import AnsibleFilterError

from ansible_collections.quankey.backup.plugins.filter import engine
from ansible_collections.quankey.backup.plugins.module_utils import config
from ansible_collections.quankey.backup.plugins.module_utils.catalog import layout

KEY = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
ROLE_VARS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "..", "roles", "pg_backup", "vars",
                         "main.yml")
GOOD = {"bucket": "backups", "host_id": "db1", "encryption_key": KEY, "retention_days": "30", "backup_name": "",
        "recipients": [], "signing_key": ""}
LABELS = {"host_id": "pg_backup_host_id", "encryption_key": "pg_backup_encryption_key", "db_name": "pg_backup_databases",
          "retention_days": "pg_backup_retention_days", "bucket": "pg_backup_s3_bucket", "recipients": "pg_backup_recipients",
          "signing_key": "pg_backup_signing_key", "backup_name": "pg_backup_name"}


def test_the_filters_are_registered():
    assert set(engine.FilterModule().filters()) == {"backup_prefixes", "settings_error"}


@pytest.mark.parametrize("prefix", ["", "prod", "/prod/", "a/b/"])
def test_backup_prefixes_are_the_catalogs(prefix):
    normalized = config.normalize_prefix(prefix)
    expected = [layout.object_prefix(normalized, "db1"), layout.metadata_prefix(normalized, "db1")]
    assert engine.backup_prefixes("db1", prefix) == expected
    assert all(key.startswith(found) for key, found in zip(
        (layout.object_key(normalized, "db1", "q", "q_backup_20250809_030000"),
         layout.metadata_key(normalized, "db1", "q", "q_backup_20250809_030000")), expected))


def test_backup_prefixes_spell_out_the_layout():
    assert engine.backup_prefixes("db2", "/prod/") == ["prod/backups/postgresql/db2/", "prod/metadata/db2/"]
    with pytest.raises(AnsibleFilterError):
        engine.backup_prefixes("")


def test_settings_the_engine_takes_give_no_error():
    assert engine.settings_error(GOOD, LABELS, ["quankey_prod", "other"]) == ""


@pytest.mark.parametrize("change, words, keys_checked", [
    ({"host_id": "db/1"}, "pg_backup_host_id 'db/1' may hold only letters", False),
    ({"backup_name": "-x"}, "pg_backup_name '-x' may hold only letters", False),
    ({"retention_days": 0}, "pg_backup_retention_days must be between 1 and 36500", False),
    ({"bucket": ""}, "pg_backup_s3_bucket is not set", False),
    ({"seed_kdf": "scrypt"}, "scrypt", False),
    ({"encryption_key": "not base64!"}, "pg_backup_encryption_key is not valid base64", True),
    ({"signing_key": "c2hvcnQ="}, "pg_backup_signing_key", True),
    ({"encryption": "hybrid-pq", "encryption_key": ""}, "pg_backup_recipients is not set", True),
])
def test_the_engines_objection_names_the_role_variable(change, words, keys_checked):
    if keys_checked and not (engine.controller_checks_keys() and engine.recipients.HAS_MLKEM):
        pytest.skip("this Python cannot check keys (cryptography with ML-KEM)")
    message = engine.settings_error(dict(GOOD, **change), LABELS, ["quankey_prod"])
    assert words in message
    assert KEY not in message


def test_each_database_is_checked():
    assert "pg_backup_databases 'a/b' is not usable in S3 keys" in engine.settings_error(GOOD, LABELS, ["ok", "a/b"])


def test_keys_are_left_to_the_host_when_this_python_cannot_check_them(monkeypatch):
    monkeypatch.setattr(engine, "controller_checks_keys", lambda: False)
    assert engine.settings_error(dict(GOOD, encryption_key="not base64!"), LABELS, ["q"]) == ""
    assert "pg_backup_host_id" in engine.settings_error(dict(GOOD, host_id="db/1"), LABELS, ["q"])


def test_without_ml_kem_here_hybrid_pq_recipients_are_left_to_the_host_but_other_keys_are_checked(monkeypatch):
    monkeypatch.setattr(engine.recipients, "HAS_MLKEM", False)
    hybrid = dict(GOOD, encryption="hybrid-pq", encryption_key="", recipients=["qkpq1-pub-AAAA"], signing_key=KEY)
    assert engine.settings_error(hybrid, LABELS, ["q"]) == ""
    assert "pg_backup_encryption_key is not valid base64" in engine.settings_error(
        dict(GOOD, encryption_key="not base64!"), LABELS, ["q"])


def test_a_field_the_engine_does_not_have_is_the_callers_bug():
    with pytest.raises(AnsibleFilterError):
        engine.settings_error(dict(GOOD, no_such_setting="x"), LABELS, ["q"])
    with pytest.raises(AnsibleFilterError):
        engine.settings_error(["not", "a", "dict"])


def test_the_pg_backup_role_gives_the_engine_settings_it_knows_each_with_a_label():
    with open(ROLE_VARS) as handle:
        role_vars = yaml.safe_load(handle)
    given, labels = role_vars["_pg_backup_engine_settings"], role_vars["_pg_backup_engine_labels"]
    assert set(given) <= set(config.FIELDS)
    assert set(given) | {"db_name"} == set(labels)
    for field, label in labels.items():
        assert label.startswith("pg_backup_"), field
        assert field == "schedule" or label in given.get(field, label), field  # the variable it names is the one read
