# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The module adapter layer: each doc fragment agrees with its argument-spec builder, options, the module's
environment and its env file become Settings (in that order, named where they were set), missing libraries and
engine errors become fail_json."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import re

import pytest
import yaml

from ansible_collections.quankey.backup.plugins.doc_fragments import encryption as encryption_fragment
from ansible_collections.quankey.backup.plugins.doc_fragments import env_file as env_file_fragment
from ansible_collections.quankey.backup.plugins.doc_fragments import postgres as postgres_fragment
from ansible_collections.quankey.backup.plugins.doc_fragments import s3 as s3_fragment
from ansible_collections.quankey.backup.plugins.module_utils import ansible_common, config
from ansible_collections.quankey.backup.plugins.module_utils.adapters import s3 as storage
from ansible_collections.quankey.backup.plugins.module_utils.formats import crypto
from ansible_collections.quankey.backup.plugins.module_utils.workflows import health
from ansible_collections.quankey.backup.plugins.module_utils.errors import ConfigError, NotFoundError

SECRET_SENTENCE = "This value is a secret and is never logged."

GROUPS = [
    (postgres_fragment, ansible_common.postgres_argument_spec),
    (s3_fragment, ansible_common.s3_argument_spec),
    (encryption_fragment, ansible_common.encryption_argument_spec),
    (env_file_fragment, ansible_common.env_file_argument_spec),
]
GROUP_IDS = ["postgres", "s3", "encryption", "env_file"]


@pytest.fixture(autouse=True)
def no_default_env_file(monkeypatch, tmp_path):
    """A host's own /etc/quankey/backup.env stays out of these tests."""
    monkeypatch.setattr(config, "DEFAULT_ENV_FILE", str(tmp_path / "no-default.env"))


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
        assert doc.get("default") is None and spec.get("default") is None, where  # Settings applies the defaults
        assert not doc.get("required") and not spec.get("required"), where  # an env file may set it
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
def test_fragment_names_each_variable_an_option_falls_back_to_in_order(fragment, builder):
    docs = _fragment(fragment)["options"]
    options = dict((setting.option, setting) for setting in config.TABLE)
    for name in builder():
        documented = re.findall(r"E\(([A-Z0-9_]+)\)", _description(docs[name]))
        if name in options:
            assert documented == list(options[name].variables), "option %s" % name
        else:
            assert documented == ([config.ENV_FILE_VARIABLE] if name == "env_file" else []), "option %s" % name


def test_fragments_require_the_libraries_the_modules_check():
    assert _fragment(s3_fragment)["requirements"] == ["boto3 >= 1.26"]
    assert _fragment(encryption_fragment)["requirements"] == [
        "cryptography >= 41 (for O(encryption=hybrid-pq), 48 or later built with OpenSSL 3.5 or later, as its wheels are)"]
    for requirement in ("boto3", "cryptography"):
        assert requirement in ansible_common._LIBRARIES  # pylint: disable=protected-access


def test_no_option_of_a_setting_has_a_default_the_settings_apply_them():
    for builder, _ids in zip((ansible_common.postgres_argument_spec, ansible_common.s3_argument_spec,
                              ansible_common.encryption_argument_spec), GROUP_IDS):
        for name, spec in builder().items():
            assert "default" not in spec and "fallback" not in spec, name
    settings = ansible_common.settings_from_params({}, {})
    assert (settings.db_host, settings.db_port, settings.db_user, settings.db_maintenance_db) == (
        "localhost", 5432, "postgres", "postgres")
    assert (settings.prefix, settings.restore_role, settings.encryption, settings.db_sslmode) == (
        "", config.DEFAULT_RESTORE_ROLE, "aes-256-gcm", None)
    assert (settings.compression, settings.storage_class, settings.retention_days, settings.allow_seed) == (
        "zstd", "STANDARD_IA", 30, False)
    assert ansible_common.postgres_argument_spec()["ssl_mode"]["choices"] == list(config.SSL_MODES)
    policy = health.HealthPolicy()
    assert (ansible_common.HEALTH_DEFAULTS["max_age_hours"], ansible_common.HEALTH_DEFAULTS["min_size_bytes"]) == (
        policy.max_age_hours, policy.min_size_bytes)


def test_a_module_option_adds_to_a_group_option_keeping_the_rest():
    spec = ansible_common.common_argument_spec(ansible_common.setting_options("retention_days"),
                                               db=dict(elements="str"), extra=dict(type="int"))
    assert spec["db"] == {"type": "str", "no_log": False, "elements": "str"}
    assert spec["extra"] == {"type": "int"}
    assert spec["retention_days"] == {"type": "int", "no_log": False}
    assert spec["env_file"] == {"type": "path"}
    assert "elements" not in ansible_common.postgres_argument_spec()["db"]  # each call builds a fresh spec


def test_settings_from_params_maps_each_option():
    params = {"login_host": "h", "login_port": 6432, "login_user": "u", "login_password": "p", "login_unix_socket": None,
              "db": "d", "ssl_mode": "verify-full", "maintenance_db": "m", "pg_bin_dir": "/opt/pg/bin", "bucket": "b",
              "prefix": "x/y", "host_id": "h1", "region": "r", "endpoint_url": "http://e", "access_key": "a",
              "secret_key": "s", "session_token": "t", "encryption_key": "k", "encryption": "aes-256-gcm",
              "compression": "gzip", "storage_class": "GLACIER", "name": "n", "retention_days": 9, "schedule": "6-hour"}
    settings = ansible_common.settings_from_params(params, {})
    assert (settings.db_host, settings.db_port, settings.db_user, settings.db_password, settings.db_name) == (
        "h", 6432, "u", "p", "d")
    assert (settings.db_sslmode, settings.db_maintenance_db, settings.pg_bin_dir) == ("verify-full", "m", "/opt/pg/bin")
    assert (settings.bucket, settings.prefix, settings.host, settings.region, settings.endpoint_url) == (
        "b", "x/y/", "h1", "r", "http://e")
    assert (settings.access_key, settings.secret_key, settings.session_token, settings.encryption_key) == ("a", "s", "t", "k")
    assert (settings.compression, settings.storage_class, settings.name, settings.retention_days) == ("gzip", "GLACIER", "n", 9)
    assert settings.schedule == "6-hour"
    assert settings.source == "module options"
    for setting in config.TABLE:
        if setting.option and params.get(setting.option) is not None:
            assert settings.label(setting.field) == "the %s option" % setting.option


def test_settings_from_params_maps_the_keyring_options():
    settings = ansible_common.settings_from_params({"encryption_key": "k", "decryption_keys": ["a", "b"],
                                                    "keyring_file": "/etc/quankey/keyring"}, {})
    assert (settings.decryption_keys, settings.keyring_file) == (["a", "b"], "/etc/quankey/keyring")
    assert settings.label("decryption_keys") == "the decryption_keys option"
    assert settings.label("keyring_file") == "the keyring_file option"


def test_settings_from_params_maps_the_restore_role_and_the_seed_consent():
    settings = ansible_common.settings_from_params({"restore_role": "quankey_restore", "allow_seed": True}, {})
    assert (settings.restore_role, settings.allow_seed) == ("quankey_restore", True)
    assert settings.label("restore_role") == "the restore_role option"
    with pytest.raises(ConfigError, match="the restore_role option 'quankey restore' is not a usable role name"):
        ansible_common.settings_from_params({"restore_role": "quankey restore"}, {})


def test_settings_from_params_maps_the_seed_passphrase_and_derivation():
    settings = ansible_common.settings_from_params({"encryption_key": "k", "seed_passphrase": "the seed's words",
                                                    "seed_kdf": "pbkdf2-sha256:250000"}, {})
    assert (settings.seed_passphrase, settings.seed_kdf) == ("the seed's words", "pbkdf2-sha256:250000")
    assert settings.label("seed_passphrase") == "the seed_passphrase option"
    assert ansible_common.encryption_argument_spec()["seed_passphrase"]["no_log"] is True
    with pytest.raises(ConfigError, match="seed_kdf option"):
        ansible_common.settings_from_params({"seed_kdf": "rot13"}, {})


def test_settings_from_params_keeps_engine_defaults_for_unset_options():
    settings = ansible_common.settings_from_params({"bucket": "b", "retention_days": None, "db": None}, {})
    assert (settings.retention_days, settings.compression, settings.db_host, settings.db_name) == (30, "zstd",
                                                                                                   "localhost", None)


def test_a_unix_socket_is_the_host():
    settings = ansible_common.settings_from_params({"login_host": "db", "login_unix_socket": "/run/postgresql"}, {})
    assert settings.db_host == "/run/postgresql"


def test_invalid_params_raise_the_engine_error_naming_the_option():
    with pytest.raises(ConfigError, match="the login_port option must be between 1 and 65535, got 0"):
        ansible_common.settings_from_params({"login_port": 0}, {})
    with pytest.raises(ConfigError, match="^the retention_days option must be between 1 and 36500, got 0$"):
        ansible_common.settings_from_params({"retention_days": 0}, {})


def _env_file(tmp_path, text, mode=0o600, name="backup.env"):
    path = tmp_path / name
    path.write_text(text)
    os.chmod(str(path), mode)
    return str(path)


def test_an_option_wins_over_the_environment_which_wins_over_the_env_file(tmp_path):
    path = _env_file(tmp_path, "DB_NAME=file_db\nDB_PORT=6000\nS3_BUCKET=file-bucket\nDB_HOST=file-host\n"
                               "BACKUP_MIN_KEEP=5\n")
    settings = ansible_common.settings_from_params({"env_file": path, "login_port": 7000},
                                                   {"DB_NAME": "env_db", "DB_HOST": ""})
    assert (settings.db_port, settings.label("db_port")) == (7000, "the login_port option")
    assert (settings.db_name, settings.label("db_name")) == ("env_db", "DB_NAME in the module's environment")
    assert (settings.bucket, settings.label("bucket")) == ("file-bucket", "S3_BUCKET in %s" % path)
    assert (settings.db_host, settings.label("db_host")) == ("file-host", "DB_HOST in %s" % path)  # empty: unset
    assert (settings.min_keep, settings.label("min_keep")) == (5, "BACKUP_MIN_KEEP in %s" % path)  # no option
    assert (settings.retention_days, settings.label("retention_days")) == (30, "the retention_days option")


def test_a_value_from_the_env_file_or_the_environment_is_named_with_where_it_was_set(tmp_path):
    path = _env_file(tmp_path, "BACKUP_RETENTION_DAYS=0\n")
    with pytest.raises(ConfigError, match="^BACKUP_RETENTION_DAYS in %s must be between 1 and 36500, got 0$" % path):
        ansible_common.settings_from_params({"env_file": path}, {})
    with pytest.raises(ConfigError, match="^BACKUP_RETENTION_DAYS in the module's environment must be between"):
        ansible_common.settings_from_params({"env_file": path}, {"BACKUP_RETENTION_DAYS": "0"})
    with pytest.raises(ConfigError, match="^S3_STORAGE_CLASS in the module's environment 'CHEAP' is not an S3"):
        ansible_common.settings_from_params({}, {"S3_STORAGE_CLASS": "CHEAP"})


def test_what_is_missing_is_named_as_the_option_with_both_ways_to_set_it():
    settings = ansible_common.settings_from_params({}, {})
    with pytest.raises(ConfigError, match=r"^the bucket option is not set: name the backup bucket \(e\.g\. bucket: "
                                          r"quankey-backups-prod, or S3_BUCKET=quankey-backups-prod in the env file\)$"):
        settings.require("bucket")
    assert settings.label("retry_window") == "S3_RETRY_WINDOW_SECONDS"  # no option: the variable
    assert settings.flag("force") == "force: true" and config.Settings().flag("force") == "--force"


def test_alternative_variables_are_read_after_the_main_one(tmp_path):
    path = _env_file(tmp_path, "AWS_DEFAULT_REGION=eu-west-1\n")
    settings = ansible_common.settings_from_params({"env_file": path}, {"AWS_REGION": "us-west-2"})
    assert (settings.region, settings.label("region")) == ("us-west-2", "AWS_REGION in the module's environment")
    settings = ansible_common.settings_from_params({}, {"AWS_SECRET_KEY": "old-name-secret"})
    assert settings.secret_key == "old-name-secret"


def test_the_default_env_file_is_read_when_it_exists(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "DEFAULT_ENV_FILE", _env_file(tmp_path, "S3_BUCKET=default-bucket\n"))
    assert ansible_common.settings_from_params({}, {}).bucket == "default-bucket"
    monkeypatch.setattr(config, "DEFAULT_ENV_FILE", str(tmp_path / "absent.env"))
    assert ansible_common.settings_from_params({}, {}).bucket is None  # no file, no option: no error


def test_quankey_env_file_names_the_file(tmp_path):
    path = _env_file(tmp_path, "S3_BUCKET=named\n", name="other.env")
    assert ansible_common.settings_from_params({}, {"QUANKEY_ENV_FILE": path}).bucket == "named"


def test_a_given_env_file_must_exist(tmp_path):
    with pytest.raises(ConfigError, match="env file .*nope.env does not exist: create it .* or pass the env_file option"):
        ansible_common.settings_from_params({"env_file": str(tmp_path / "nope.env")}, {})


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_env_file_fails_when_given_and_is_skipped_with_a_warning_by_default(tmp_path, monkeypatch):
    path = _env_file(tmp_path, "S3_BUCKET=b\n", mode=0o000)
    with pytest.raises(ConfigError, match="cannot read env file .* \\(permission denied\\)"):
        ansible_common.settings_from_params({"env_file": path}, {})
    monkeypatch.setattr(config, "DEFAULT_ENV_FILE", path)
    warnings = []
    assert ansible_common.settings_from_params({}, {}, warnings.append).bucket is None
    assert warnings and "not readable by this user" in warnings[0]


def test_an_unreadable_default_env_file_is_skipped_with_a_warning(tmp_path, monkeypatch):
    path = _env_file(tmp_path, "S3_BUCKET=b\n")
    monkeypatch.setattr(config, "DEFAULT_ENV_FILE", path)
    monkeypatch.setattr(ansible_common.os, "access", lambda name, mode: name != path)
    warnings = []
    assert ansible_common.settings_from_params({}, {}, warnings.append).bucket is None
    assert warnings == ["env file %s is not readable by this user, so its settings are not used: run the task with "
                        "become, or set env_file" % path]


def test_an_env_file_others_may_read_is_a_warning(tmp_path):
    path = _env_file(tmp_path, "S3_BUCKET=b\n", mode=0o644)
    warnings = []
    assert ansible_common.settings_from_params({"env_file": path}, {}, warnings.append).bucket == "b"
    assert warnings == ["env file %s is mode 0644 and holds secrets: chmod 0600 %s" % (path, path)]


def test_secrets_read_from_the_environment_or_the_env_file_are_hidden(tmp_path):
    path = _env_file(tmp_path, "PGPASSWORD=file-password\nBACKUP_DECRYPTION_KEYS='old-key-1, old-key-2'\n"
                               "S3_BUCKET=not-secret\nPGSSLPASSWORD=tls-key-password\nPGSSLMODE=require\n")
    hidden = set()
    settings = ansible_common.settings_from_params({"env_file": path}, {"BACKUP_SIGNING_KEY": "env-signing-key"},
                                                   hide=hidden.add)
    assert {"file-password", "old-key-1, old-key-2", "old-key-1", "old-key-2", "env-signing-key",
            "tls-key-password"} <= hidden
    assert "not-secret" not in hidden and "require" not in hidden
    assert settings.pg_passthrough == {"PGSSLPASSWORD": "tls-key-password", "PGSSLMODE": "require"}
    assert "file-password" not in repr(settings) + repr(settings.describe())


def test_the_env_files_libpq_variables_reach_the_client_programs(tmp_path):
    path = _env_file(tmp_path, "PGSSLROOTCERT=/etc/quankey/root.crt\nPGSERVICEFILE=/etc/quankey/pg_service.conf\n")
    settings = ansible_common.settings_from_params({"env_file": path}, {})
    assert settings.pg_user_environment() == {"PGSSLROOTCERT": "/etc/quankey/root.crt",
                                              "PGSERVICEFILE": "/etc/quankey/pg_service.conf"}


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
