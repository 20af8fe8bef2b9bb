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
    assert set(engine.FilterModule().filters()) == {"backup_prefixes", "drill_reports_prefix", "settings_error",
                                                    "env_extra_error", "wal_prefix", "base_prefix"}


@pytest.mark.parametrize("prefix", ["", "prod", "/prod/", "a/b/"])
def test_backup_prefixes_are_the_catalogs(prefix):
    normalized = config.normalize_prefix(prefix)
    expected = [layout.object_prefix(normalized, "db1"), layout.metadata_prefix(normalized, "db1")]
    assert engine.backup_prefixes("db1", prefix) == expected
    assert all(key.startswith(found) for key, found in zip(
        (layout.object_key(normalized, "db1", "q", "q_backup_20250809_030000"),
         layout.metadata_key(normalized, "db1", "q", "q_backup_20250809_030000")), expected))


def test_drill_reports_prefix_is_the_catalogs():
    assert engine.drill_reports_prefix("db2", "/prod/") == "prod/drills/db2/"
    assert engine.drill_reports_prefix("db2") == "drills/db2/"
    with pytest.raises(AnsibleFilterError, match="needs a host id"):
        engine.drill_reports_prefix("")


def test_wal_prefix_is_the_catalogs_and_holds_every_archived_file():
    assert engine.wal_prefix("db2", "/prod/") == "prod/wal/db2/"
    assert engine.wal_prefix("db2") == "wal/db2/"
    assert layout.wal_key("prod/", "db2", "00000001", "000000010000000000000003").startswith(
        engine.wal_prefix("db2", "prod"))
    assert not layout.wal_key("prod/", "db20", "00000001", "000000010000000000000003").startswith(
        engine.wal_prefix("db2", "prod"))
    with pytest.raises(AnsibleFilterError, match="needs a host id"):
        engine.wal_prefix("")


def test_base_prefix_is_the_catalogs_and_holds_the_hosts_base_backups_only():
    assert engine.base_prefix("db2", "/prod/") == "prod/base/db2/"
    assert engine.base_prefix("db2") == "base/db2/"
    name = layout.base_basename("cluster", layout.parse_timestamp("20261201_030000"))
    for key in (layout.base_object_key("prod/", "db2", name), layout.base_metadata_key("prod/", "db2", name)):
        assert key.startswith(engine.base_prefix("db2", "prod"))
        assert not key.startswith(engine.base_prefix("db", "prod"))  # no other host's: the prefix ends with /
    assert not layout.base_object_key("prod/", "db20", name).startswith(engine.base_prefix("db2", "prod"))
    assert not engine.base_prefix("db2", "prod").startswith(engine.wal_prefix("db2", "prod"))
    with pytest.raises(AnsibleFilterError, match="base_prefix needs a host id"):
        engine.base_prefix("")


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


# -- env_extra_error: pg_backup_env_extra holds only what the engine uses ---------------------------------------

PREFLIGHT = os.path.join(os.path.dirname(ROLE_VARS), "..", "tasks", "preflight.yml")


def _role_vars():
    with open(ROLE_VARS) as handle:
        return yaml.safe_load(handle)


def test_every_kind_of_variable_the_engine_uses_is_accepted():
    extra = {"HTTPS_PROXY": "http://user:pw@proxy:3128", "no_proxy": "169.254.169.254,.internal",
             "AWS_CA_BUNDLE": "/etc/ssl/s3-ca.pem", "PGSSLROOTCERT": "/etc/quankey/root.crt",
             "PGSERVICEFILE": "/etc/quankey/pg_service.conf", "AWS_SESSION_TOKEN": "to ken",
             "BACKUP_DECRYPTION_KEYS": KEY, "BACKUP_ALLOW_SEED": True, "AWS_REGION": "eu-west-1", "TZ": "Europe/Berlin",
             "AWS_USE_FIPS_ENDPOINT": True, "AWS_MAX_ATTEMPTS": 10, "AWS_RETRY_MODE": "adaptive",
             "S3_CLIENT_CONFIG": '{"read_timeout": 60}', "S3_VALIDATE_CERTS": "true"}
    assert engine.env_extra_error(extra) == ""
    assert engine.env_extra_error({}) == ""
    assert engine.env_extra_error(dict((name, "x") for name in config.PROCESS_VARIABLES)) == ""


@pytest.mark.parametrize("extra, words", [
    ({"BLAH": "x"}, "BLAH is not a variable quankey-backup reads, so it would have no effect. Accepted are the settings"),
    ({"AWS_MAX_ATTEMPTS": 0}, "AWS_MAX_ATTEMPTS in pg_backup_env_extra must be between 1 and 100, got 0"),
    ({"AWS_RETRY_MODE": "eager"}, "AWS_RETRY_MODE in pg_backup_env_extra 'eager' is not a botocore retry mode: choose "
                                  "one of legacy, standard, adaptive"),
    ({"S3_CLIENT_CONFIG": "{retries"}, "S3_CLIENT_CONFIG in pg_backup_env_extra is not valid JSON"),
    ({"SSL_CERT_FILE": "/ca.pem"}, "use AWS_CA_BUNDLE"),
    ({"PGHOST": "db.internal"}, "PGHOST is not a variable quankey-backup reads, so it would have no effect (use DB_HOST)"),
    ({"1ST": "x"}, "'1ST' is not a variable name: use letters, digits and '_', not starting with a digit"),
    ({"HTTPS-PROXY": "x"}, "'HTTPS-PROXY' is not a variable name"),
    ({"": "x"}, "'' is not a variable name"),
    ({"NO_PROXY": None}, "NO_PROXY has no value (null): give it a one-line value"),
    ({"HTTPS_PROXY": "http://a\nDB_HOST=evil"}, "HTTPS_PROXY has a line break: give it a one-line value"),
    ({"BACKUP_RETENTION_DAYS": "forever"}, "BACKUP_RETENTION_DAYS in pg_backup_env_extra must be a whole number"),
    ({"BACKUP_ALLOW_SEED": "maybe"}, "BACKUP_ALLOW_SEED in pg_backup_env_extra must be true or false"),
])
def test_what_the_engine_would_not_use_is_refused_by_name(extra, words):
    message = engine.env_extra_error(extra)
    assert message.startswith("pg_backup_env_extra: ") and words in message
    assert ("Accepted are" in message) == ("would have no effect" in message)


def test_a_refusal_names_every_bad_entry_and_no_value():
    message = engine.env_extra_error({"BLAH": "s3cr3t-value", "FOO": "other-s3cr3t", "HTTPS_PROXY": "http://ok:3128",
                                      "PGPASSFILE": "/root/.pgpass"})
    assert "BLAH is not" in message and "FOO is not" in message and "PGPASSFILE is not" in message
    assert "s3cr3t" not in message and "HTTPS_PROXY is" not in message and "/root" not in message
    assert all(name in message for name in config.PROCESS_VARIABLES)  # what is accepted instead


def test_an_entry_that_would_replace_a_line_the_role_writes_names_the_variable_to_set():
    role_vars = _role_vars()
    labels = dict(role_vars["_pg_backup_engine_labels"], **role_vars["_pg_backup_env_written_labels"])
    fields = dict((setting.variable, setting.field) for setting in config.TABLE)
    for name in role_vars["_pg_backup_env_names"]:
        message = engine.env_extra_error({name: "x"}, role_vars["_pg_backup_env_names"], labels)
        assert message == "pg_backup_env_extra: %s is written by the role itself: set %s instead" % (
            name, labels[fields[name]]), name
        assert labels[fields[name]].startswith("pg_backup_")


def test_an_older_name_of_a_variable_the_role_writes_is_refused_too():
    role_vars = _role_vars()
    labels = dict(role_vars["_pg_backup_engine_labels"], **role_vars["_pg_backup_env_written_labels"])
    for older, newer, label in (("AWS_REGION", "AWS_DEFAULT_REGION", "pg_backup_s3_region"),
                                ("AWS_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "pg_backup_aws_access_key_id"),
                                ("AWS_SECRET_KEY", "AWS_SECRET_ACCESS_KEY", "pg_backup_aws_secret_access_key")):
        assert engine.env_extra_error({older: "x"}, role_vars["_pg_backup_env_names"], labels) == (
            "pg_backup_env_extra: %s is read only when %s is not set, which the role writes itself: set %s instead"
            % (older, newer, label))
    # one the role does not write the newer name of is taken
    assert engine.env_extra_error({"AWS_SECURITY_TOKEN": "t"}, role_vars["_pg_backup_env_names"], labels) == ""


def test_the_pg_backup_roles_preflight_asks_the_filter_with_the_roles_lists():
    with open(PREFLIGHT) as handle:
        tasks = yaml.safe_load(handle)
    check = [task for task in tasks if "pg_backup_env_extra" in task["name"]]
    assert len(check) == 1 and check[0]["ansible.builtin.assert"]["that"] == "__pg_backup_env_extra_error | length == 0"
    expression = " ".join(check[0]["vars"]["__pg_backup_env_extra_error"].split())
    assert ("pg_backup_env_extra | quankey.backup.env_extra_error(_pg_backup_env_names, _pg_backup_engine_labels | "
            "combine(_pg_backup_env_written_labels))") in expression
    # every line the role writes is a variable the engine reads
    assert [name for name in _role_vars()["_pg_backup_env_names"] if config.variable_use(name) != "setting"] == []


def test_env_extra_that_is_no_dict_is_the_callers_bug():
    with pytest.raises(AnsibleFilterError):
        engine.env_extra_error(["HTTPS_PROXY"])


def test_the_filters_doc_and_the_roles_argument_spec_name_every_process_variable():
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "..", "..", "..", "..", "plugins", "filter", "env_extra_error.yml")) as handle:
        doc = " ".join(yaml.safe_load(handle)["DOCUMENTATION"]["description"])
    with open(os.path.join(os.path.dirname(ROLE_VARS), "..", "meta", "argument_specs.yml")) as handle:
        spec = yaml.safe_load(handle)["argument_specs"]["main"]["options"]["pg_backup_env_extra"]
    for text in (doc, " ".join(spec["description"])):
        # the lower-case proxy variables are "their lower-case forms"
        assert [name for name in config.PROCESS_VARIABLES if name.isupper() and "C(%s)" % name not in text] == []
        assert "lower-case forms" in text
