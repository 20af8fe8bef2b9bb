# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The module adapter layer: each doc fragment agrees with its argument-spec builder, options become
Settings, missing libraries and engine errors become fail_json."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re

import pytest
import yaml

from ansible_collections.quankey.backup.plugins.doc_fragments import encryption as encryption_fragment
from ansible_collections.quankey.backup.plugins.doc_fragments import postgres as postgres_fragment
from ansible_collections.quankey.backup.plugins.doc_fragments import s3 as s3_fragment
from ansible_collections.quankey.backup.plugins.module_utils import ansible_common, config
from ansible_collections.quankey.backup.plugins.module_utils.adapters import s3 as storage
from ansible_collections.quankey.backup.plugins.module_utils.formats import crypto
from ansible_collections.quankey.backup.plugins.module_utils.workflows import health
from ansible_collections.quankey.backup.plugins.module_utils.errors import ConfigError, NotFoundError

SECRET_SENTENCE = "This value is a secret and is never logged."
# Variables the host command reads besides config.VARIABLES (see cli.load_environment).
HOST_COMMAND_EXTRAS = ("AWS_REGION", "BACKUP_SCHEDULE")

GROUPS = [
    (postgres_fragment, ansible_common.postgres_argument_spec),
    (s3_fragment, ansible_common.s3_argument_spec),
    (encryption_fragment, ansible_common.encryption_argument_spec),
]
GROUP_IDS = ["postgres", "s3", "encryption"]


def _fragment(fragment):
    return yaml.safe_load(fragment.ModuleDocFragment.DOCUMENTATION)


def _description(doc):
    text = doc["description"]
    return " ".join(text) if isinstance(text, list) else text


@pytest.mark.parametrize("fragment, builder", GROUPS, ids=GROUP_IDS)
def test_fragment_and_argument_spec_list_the_same_options(fragment, builder):
    assert sorted(_fragment(fragment)["options"]) == sorted(builder())


@pytest.mark.parametrize("fragment, builder", GROUPS, ids=GROUP_IDS)
def test_fragment_and_argument_spec_agree_on_each_option(fragment, builder):
    docs = _fragment(fragment)["options"]
    for name, spec in builder().items():
        doc = docs[name]
        where = "option %s" % name
        assert doc.get("type", "str") == spec.get("type", "str"), where
        assert doc.get("default") == spec.get("default"), where
        assert bool(doc.get("required", False)) == bool(spec.get("required", False)), where
        assert doc.get("choices") == spec.get("choices"), where
        assert doc.get("aliases", []) == spec.get("aliases", []), where
        assert doc.get("elements") == spec.get("elements"), where


@pytest.mark.parametrize("fragment, builder", GROUPS, ids=GROUP_IDS)
def test_secret_options_are_no_log_and_say_so(fragment, builder):
    docs = _fragment(fragment)["options"]
    for name, spec in builder().items():
        says_secret = SECRET_SENTENCE in _description(docs[name])
        assert bool(spec.get("no_log")) is says_secret, "option %s" % name
        if re.search(r"pass|secret|token|key", name):
            assert "no_log" in spec, "option %s looks secret: set no_log explicitly (False when it is not)" % name


@pytest.mark.parametrize("fragment, builder", GROUPS, ids=GROUP_IDS)
def test_fragment_names_each_fallback_variable_in_order(fragment, builder):
    docs = _fragment(fragment)["options"]
    for name, spec in builder().items():
        documented = re.findall(r"E\(([A-Z0-9_]+)\)", _description(docs[name]))
        variables = list(spec["fallback"][1]) if "fallback" in spec else []
        assert documented == variables, "option %s" % name


@pytest.mark.parametrize("fragment, builder", GROUPS, ids=GROUP_IDS)
def test_fallbacks_start_with_a_variable_of_the_host_command(fragment, builder):
    for name, spec in builder().items():
        if "fallback" in spec:
            assert spec["fallback"][1][0] in config.VARIABLES + HOST_COMMAND_EXTRAS, "option %s" % name


def test_fragments_require_the_libraries_the_modules_check():
    assert _fragment(s3_fragment)["requirements"] == ["boto3 >= 1.26"]
    assert _fragment(encryption_fragment)["requirements"] == [
        "cryptography >= 41 (for O(encryption=hybrid-pq), 48 or later built with OpenSSL 3.5 or later, as its wheels are)"]
    for requirement in ("boto3", "cryptography"):
        assert requirement in ansible_common._LIBRARIES  # pylint: disable=protected-access


def test_defaults_are_the_engine_defaults():
    pg, s3 = ansible_common.postgres_argument_spec(), ansible_common.s3_argument_spec()
    settings = config.Settings()
    assert (pg["login_host"]["default"], pg["login_port"]["default"], pg["login_user"]["default"]) == (
        settings.db_host, settings.db_port, settings.db_user)
    assert pg["maintenance_db"]["default"] == settings.db_maintenance_db
    assert s3["prefix"]["default"] == settings.prefix
    assert pg["ssl_mode"]["choices"] == list(config.SSL_MODES)
    assert pg["restore_role"]["default"] == settings.restore_role == config.DEFAULT_RESTORE_ROLE
    policy = health.HealthPolicy()
    assert (ansible_common.HEALTH_DEFAULTS["max_age_hours"], ansible_common.HEALTH_DEFAULTS["min_size_bytes"]) == (
        policy.max_age_hours, policy.min_size_bytes)


def test_a_module_option_overrides_a_group_option_keeping_the_rest():
    spec = ansible_common.common_argument_spec(db=dict(required=True), extra=dict(type="int"))
    assert spec["db"]["required"] is True
    assert spec["db"]["fallback"][1] == ["DB_NAME"] and spec["db"]["type"] == "str"
    assert spec["extra"] == {"type": "int"}
    assert "required" not in ansible_common.postgres_argument_spec()["db"]  # each call builds a fresh spec


def test_settings_from_params_maps_each_option():
    params = {"login_host": "h", "login_port": 6432, "login_user": "u", "login_password": "p", "login_unix_socket": None,
              "db": "d", "ssl_mode": "verify-full", "maintenance_db": "m", "pg_bin_dir": "/opt/pg/bin", "bucket": "b",
              "prefix": "x/y", "host_id": "h1", "region": "r", "endpoint_url": "http://e", "access_key": "a",
              "secret_key": "s", "session_token": "t", "encryption_key": "k", "encryption": "aes-256-gcm",
              "compression": "gzip", "storage_class": "GLACIER", "name": "n", "retention_days": 9}
    settings = ansible_common.settings_from_params(params)
    assert (settings.db_host, settings.db_port, settings.db_user, settings.db_password, settings.db_name) == (
        "h", 6432, "u", "p", "d")
    assert (settings.db_sslmode, settings.db_maintenance_db, settings.pg_bin_dir) == ("verify-full", "m", "/opt/pg/bin")
    assert (settings.bucket, settings.prefix, settings.host, settings.region, settings.endpoint_url) == (
        "b", "x/y/", "h1", "r", "http://e")
    assert (settings.access_key, settings.secret_key, settings.session_token, settings.encryption_key) == ("a", "s", "t", "k")
    assert (settings.compression, settings.storage_class, settings.name, settings.retention_days) == ("gzip", "GLACIER", "n", 9)
    assert settings.source == "module options"


def test_settings_from_params_maps_the_keyring_options():
    settings = ansible_common.settings_from_params({"encryption_key": "k", "decryption_keys": ["a", "b"],
                                                    "keyring_file": "/etc/quankey/keyring"})
    assert (settings.decryption_keys, settings.keyring_file) == (["a", "b"], "/etc/quankey/keyring")
    assert settings.label("decryption_keys") == "the decryption_keys option"
    assert settings.label("keyring_file") == "the keyring_file option"


def test_settings_from_params_maps_the_restore_role_and_the_seed_consent():
    settings = ansible_common.settings_from_params({"restore_role": "quankey_restore", "allow_seed": True})
    assert (settings.restore_role, settings.allow_seed) == ("quankey_restore", True)
    assert settings.label("restore_role") == "the restore_role option"
    assert ansible_common.postgres_argument_spec()["restore_role"]["fallback"][1] == ["BACKUP_RESTORE_ROLE"]
    with pytest.raises(ConfigError, match="the restore_role option 'quankey restore' is not a usable role name"):
        ansible_common.settings_from_params({"restore_role": "quankey restore"})


def test_settings_from_params_maps_the_seed_passphrase_and_derivation():
    settings = ansible_common.settings_from_params({"encryption_key": "k", "seed_passphrase": "the seed's words",
                                                    "seed_kdf": "pbkdf2-sha256:250000"})
    assert (settings.seed_passphrase, settings.seed_kdf) == ("the seed's words", "pbkdf2-sha256:250000")
    assert settings.label("seed_passphrase") == "the seed_passphrase option"
    spec = ansible_common.encryption_argument_spec()
    assert spec["seed_passphrase"]["no_log"] is True
    assert (spec["seed_passphrase"]["fallback"][1], spec["seed_kdf"]["fallback"][1]) == (
        ["BACKUP_SEED_PASSPHRASE"], ["BACKUP_SEED_KDF"])
    with pytest.raises(ConfigError, match="seed_kdf option"):
        ansible_common.settings_from_params({"seed_kdf": "rot13"})


def test_settings_from_params_keeps_engine_defaults_for_unset_options():
    settings = ansible_common.settings_from_params({"bucket": "b", "retention_days": None, "db": None})
    assert (settings.retention_days, settings.compression, settings.db_host, settings.db_name) == (30, "zstd",
                                                                                                   "localhost", None)


def test_a_unix_socket_is_the_host():
    settings = ansible_common.settings_from_params({"login_host": "db", "login_unix_socket": "/run/postgresql"})
    assert settings.db_host == "/run/postgresql"


def test_invalid_params_raise_the_engine_error():
    with pytest.raises(ConfigError, match="the login_port option must be between 1 and 65535, got 0"):
        ansible_common.settings_from_params({"login_port": 0})


class _Failed(Exception):
    pass


class _Module:
    """Records fail_json like AnsibleModule would end the module."""

    def __init__(self):
        self.failure = None

    def fail_json(self, **kwargs):
        self.failure = kwargs
        raise _Failed()


def test_require_libraries_names_the_missing_one(monkeypatch):
    monkeypatch.setattr(storage, "HAS_BOTO3", True)
    monkeypatch.setattr(crypto, "HAS_CRYPTOGRAPHY", False)
    monkeypatch.setattr(crypto, "CRYPTOGRAPHY_IMPORT_ERROR", "ImportError: cryptography")
    module = _Module()
    with pytest.raises(_Failed):
        ansible_common.require_libraries(module, "boto3", "cryptography")
    assert "Failed to import the required Python library (cryptography)" in module.failure["msg"]
    assert module.failure["exception"] == "ImportError: cryptography"


def test_require_libraries_passes_when_present(monkeypatch):
    monkeypatch.setattr(storage, "HAS_BOTO3", True)
    module = _Module()
    ansible_common.require_libraries(module, "boto3")
    assert module.failure is None


def test_engine_errors_turn_an_expected_failure_into_its_message():
    module = _Module()
    with pytest.raises(_Failed):
        with ansible_common.engine_errors(module, "restore"):
            raise NotFoundError("no backup was taken before 2025-08-01T00:00:00Z (oldest: q_backup_20250802_030000)",
                                step="select")
    assert module.failure == {
        "msg": "select failed: no backup was taken before 2025-08-01T00:00:00Z (oldest: q_backup_20250802_030000)",
        "error": {"type": "NotFoundError", "step": "select", "exit_code": 7}}


def test_engine_errors_keep_the_traceback_of_a_bug():
    module = _Module()
    with pytest.raises(_Failed):
        with ansible_common.engine_errors(module, "restore"):
            {}["missing"]  # pylint: disable=pointless-statement
    assert module.failure["msg"].startswith("restore failed unexpectedly (KeyError: 'missing')")
    assert "Traceback (most recent call last)" in module.failure["exception"]


def test_engine_errors_let_success_through():
    module = _Module()
    with ansible_common.engine_errors(module, "listing"):
        value = 42
    assert value == 42 and module.failure is None
