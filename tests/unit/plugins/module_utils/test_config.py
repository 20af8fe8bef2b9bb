# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Settings from the seed's variables and env files."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import re

import pytest

from ansible_collections.quankey.backup.plugins.module_utils import config
from ansible_collections.quankey.backup.plugins.module_utils.errors import ConfigError

SECRET = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3I="


def test_seed_variables_map_to_settings_with_defaults():
    settings = config.settings_from_env({"DB_NAME": "quankey_prod", "S3_BUCKET": "b", "PGPASSWORD": "pw",
                                         "BACKUP_ENCRYPTION_KEY": SECRET, "S3_PREFIX": "/team/"})
    assert settings.db_host == "localhost"
    assert settings.db_port == 5432
    assert settings.retention_days == 30
    assert settings.min_keep == 3
    assert settings.storage_class == "STANDARD_IA"
    assert settings.compression == "zstd"
    assert settings.encryption == "aes-256-gcm"
    assert settings.prefix == "team/"
    assert settings.name == "quankey_prod"
    assert settings.pg_environment()["PGPASSWORD"] == "pw"


def test_secrets_stay_out_of_repr_and_describe():
    settings = config.settings_from_env({"DB_NAME": "d", "PGPASSWORD": "pw-value-1", "AWS_SECRET_ACCESS_KEY": "aws-value-2",
                                         "BACKUP_ENCRYPTION_KEY": SECRET, "AWS_SESSION_TOKEN": "tok-value-3"})
    text = repr(settings) + repr(settings.describe())
    for secret in ("pw-value-1", "aws-value-2", SECRET, "tok-value-3"):
        assert secret not in text


@pytest.mark.parametrize("variable,value,match", [
    ("DB_PORT", "fivefour", "DB_PORT must be a whole number"),
    ("DB_PORT", "70000", "between 1 and 65535"),
    ("BACKUP_RETENTION_DAYS", "0", "BACKUP_RETENTION_DAYS must be between"),
    ("BACKUP_MIN_KEEP", "x", "BACKUP_MIN_KEEP must be a whole number"),
    ("S3_STORAGE_CLASS", "CHEAP", "not an S3 storage class"),
    ("BACKUP_COMPRESSION", "lz4", "BACKUP_COMPRESSION 'lz4' is not supported"),
    ("BACKUP_ENCRYPTION", "rot13", "BACKUP_ENCRYPTION 'rot13' is not supported"),
    ("BACKUP_HOST_ID", "db 1/x", "BACKUP_HOST_ID"),
    ("DB_NAME", "a/b", "DB_NAME"),
    ("DB_SSLMODE", "always", "DB_SSLMODE"),
])
def test_invalid_values_name_the_variable(variable, value, match):
    with pytest.raises(ConfigError, match=match):
        config.settings_from_env({variable: value})


def test_require_names_the_variable_and_the_fix():
    settings = config.settings_from_env({"DB_NAME": "d"})
    with pytest.raises(ConfigError, match=r"BACKUP_ENCRYPTION_KEY is not set: generate one with `openssl rand -base64 32`"):
        settings.require("encryption_key")
    with pytest.raises(ConfigError, match="S3_BUCKET is not set"):
        settings.require("bucket")


def test_env_text_parsing_handles_export_quotes_and_comments():
    values = config.parse_env_text("# comment\nexport DB_NAME=quankey_prod\nPGPASSWORD='p a#ss'\n"
                                   "S3_BUCKET=\"b\\\"q\"\nDB_HOST=h # trailing\n\n")
    assert values == {"DB_NAME": "quankey_prod", "PGPASSWORD": "p a#ss", "S3_BUCKET": 'b"q', "DB_HOST": "h"}


def test_env_text_errors_give_the_line_number_not_the_content():
    with pytest.raises(ConfigError, match="line 2 is not KEY=VALUE") as info:
        config.parse_env_text("A=1\nthis is the secret\n", origin="/etc/quankey/backup.env")
    assert "secret" not in str(info.value)


def test_env_file_mode_is_checked(tmp_path):
    path = tmp_path / "backup.env"
    path.write_text("DB_NAME=d\n")
    os.chmod(str(path), 0o644)
    values, warnings = config.read_env_file(str(path))
    assert values == {"DB_NAME": "d"}
    assert warnings and "chmod 0600" in warnings[0]
    os.chmod(str(path), 0o600)
    assert config.read_env_file(str(path))[1] == []


def test_missing_env_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        config.read_env_file(str(tmp_path / "nope.env"))


def test_messages_name_the_setting_where_the_user_set_it():
    from_file = config.settings_from_env({"DB_NAME": "d"}, origin="/etc/quankey/backup.env")
    assert from_file.label("db_password") == "PGPASSWORD in /etc/quankey/backup.env"
    assert config.settings_from_env({"DB_NAME": "d"}).label("db_password") == "PGPASSWORD"
    from_module = config.Settings(db_name="d", labels={"encryption_key": "the encryption_key option"})
    with pytest.raises(ConfigError, match="^the encryption_key option is not set: generate one"):
        from_module.require("encryption_key")


@pytest.mark.parametrize("line,value", [
    ("A='it'\\''s'", "it's"),             # what tests/testbed.py's write_env_file writes for a quote
    ("A=abc#def", "abc#def"),             # '#' inside a word is not a comment, as in the shell
    ("A=abc\\ def", "abc def"),
    ('A="a \\$b \\\\ c"', "a $b \\ c"),
    ("A=", ""),
])
def test_env_values_are_read_as_the_shell_reads_them(line, value):
    assert config.parse_env_text(line)["A"] == value


@pytest.mark.parametrize("line,problem", [
    ("PGPASSWORD='s3cr3t", "unterminated single quote"),
    ('PGPASSWORD="s3cr3t', "unterminated double quote"),
    ("PGPASSWORD=s3cr3t more", "unquoted space"),
])
def test_env_value_errors_name_the_line_and_variable_not_the_value(line, problem):
    with pytest.raises(ConfigError, match="line 1 \\(PGPASSWORD\\) has an? %s" % problem) as info:
        config.parse_env_text(line, origin="backup.env")
    assert "s3cr3t" not in str(info.value)


def test_keyring_variables_map_to_settings_and_stay_secret():
    old = "b2xkLW9sZC1vbGQtb2xkLW9sZC1vbGQtb2xkLW9sZC0="
    settings = config.settings_from_env({"BACKUP_ENCRYPTION_KEY": SECRET, "BACKUP_DECRYPTION_KEYS": old,
                                         "BACKUP_KEYRING_FILE": "/etc/quankey/keyring"}, origin="/etc/quankey/backup.env")
    assert (settings.decryption_keys, settings.keyring_file) == (old, "/etc/quankey/keyring")
    assert settings.label("decryption_keys") == "BACKUP_DECRYPTION_KEYS in /etc/quankey/backup.env"
    assert settings.label("keyring_file") == "BACKUP_KEYRING_FILE in /etc/quankey/backup.env"
    assert old not in repr(settings) + repr(settings.describe())
    assert "BACKUP_DECRYPTION_KEYS" in config.SECRET_VARIABLES and "BACKUP_KEYRING_FILE" in config.VARIABLES


CLI_DOC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "..", "docs", "CLI.md")


def _cli_settings_rows():
    """(variables, defaults) of each row of docs/CLI.md's settings table, without the libpq pass-through row."""
    with open(CLI_DOC) as handle:
        section = handle.read().split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        names = re.findall(r"`([A-Z][A-Z0-9_]*\*?)`", cells[0])
        if all(config.is_pg_passthrough(name.rstrip("*")) for name in names):
            continue
        rows.append((names, [value.strip() for value in cells[1].split(", ")]))
    return rows


def test_the_cli_doc_names_exactly_the_tables_variables_with_their_defaults():
    rows = _cli_settings_rows()
    documented = [name for names, _defaults in rows for name in names]
    assert sorted(documented) == sorted(config.VARIABLES)
    assert len(documented) == len(set(documented))
    by_variable = dict((setting.variable, setting) for setting in config.TABLE)
    for names, defaults in rows:
        assert len(defaults) == len(names), "row %s: one default per variable" % ", ".join(names)
        for name, default in zip(names, defaults):
            assert default == (by_variable[name].documented_default or "—"), name


def test_the_tables_lists_come_from_its_rows():
    assert config.FIELD_VARIABLES["retention_days"] == "BACKUP_RETENTION_DAYS"
    assert config.VARIABLES == tuple(setting.variable for setting in config.TABLE)
    assert set(config.READ_VARIABLES) == set(config.VARIABLES) | {"AWS_REGION", "AWS_ACCESS_KEY", "AWS_SECRET_KEY",
                                                                  "AWS_SECURITY_TOKEN", "AWS_DEFAULT_PROFILE"}
    assert set(config.SECRET_VARIABLES) == {"PGPASSWORD", "AWS_SECRET_ACCESS_KEY", "AWS_SECRET_KEY", "AWS_SESSION_TOKEN",
                                            "AWS_SECURITY_TOKEN", "BACKUP_ENCRYPTION_KEY", "BACKUP_DECRYPTION_KEYS",
                                            "BACKUP_SIGNING_KEY", "BACKUP_SEED_PASSPHRASE", "S3_REPLICA_SECRET_ACCESS_KEY"}
    assert len(set(setting.field for setting in config.TABLE)) == len(config.TABLE)
    options = [name for setting in config.TABLE if setting.option for name in (setting.option,) + setting.aliases]
    assert len(options) == len(set(options))
    for setting in config.TABLE:
        if setting.kind == "choice":
            assert setting.choices and setting.problem and (setting.default is None or setting.default in setting.choices)
        if setting.kind == "int" and setting.default is not None:
            assert setting.bounds[0] <= setting.default <= setting.bounds[1]


def test_settings_takes_the_tables_fields_as_keywords_only():
    settings = config.Settings(db_name="d", retention_days="7", allow_seed="yes")
    assert (settings.db_name, settings.retention_days, settings.allow_seed) == ("d", 7, True)
    for setting in config.TABLE:
        if setting.stored and setting.default is not None:
            assert getattr(config.Settings(), setting.field) == setting.default, setting.field
    with pytest.raises(TypeError, match="unknown settings: retention"):
        config.Settings(retention=7)
    with pytest.raises(TypeError):
        config.Settings("d")  # pylint: disable=too-many-function-args


def test_describe_holds_every_setting_but_the_secrets():
    settings = config.Settings(db_name="d", db_password="pw-1", secret_key="sk-2", encryption_key=SECRET,
                               seed_passphrase="seed-3", signing_key="sign-4", session_token="tok-5",
                               decryption_keys=["old-6"])
    view = settings.describe()
    for setting in config.TABLE:
        if setting.stored:
            assert (setting.field in view) is not setting.secret, setting.field
    assert view["name"] == "d" and view["host"] == settings.host
    text = repr(settings) + repr(view)
    for secret in ("pw-1", "sk-2", SECRET, "seed-3", "sign-4", "tok-5", "old-6"):
        assert secret not in text


def test_an_alternative_variable_is_named_when_it_gave_the_value():
    settings = config.settings_from_env({"AWS_REGION": "eu-west-1"}, origin="/e.env", from_origin={"AWS_REGION"})
    assert (settings.region, settings.label("region")) == ("eu-west-1", "AWS_REGION in /e.env")
    settings = config.settings_from_env({"AWS_REGION": "eu-west-1", "AWS_DEFAULT_REGION": "eu-central-1"})
    assert (settings.region, settings.label("region")) == ("eu-central-1", "AWS_DEFAULT_REGION")


def test_values_from_the_environment_are_not_named_with_the_env_file():
    env = {"BACKUP_RETENTION_DAYS": "0", "DB_NAME": "d"}
    with pytest.raises(ConfigError, match="^BACKUP_RETENTION_DAYS must be between 1 and 36500, got 0$"):
        config.settings_from_env(env, origin="/etc/quankey/backup.env", from_origin={"DB_NAME"})
    with pytest.raises(ConfigError, match="^BACKUP_RETENTION_DAYS in /etc/quankey/backup.env must be between"):
        config.settings_from_env(env, origin="/etc/quankey/backup.env", from_origin={"BACKUP_RETENTION_DAYS"})


def test_the_env_file_path_is_given_then_the_variable_then_the_default_when_present(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "DEFAULT_ENV_FILE", str(tmp_path / "absent.env"))
    assert config.env_file_path(None, {}) is None
    assert config.env_file_path(None, {"QUANKEY_ENV_FILE": "/x.env"}) == "/x.env"
    assert config.env_file_path("/given.env", {"QUANKEY_ENV_FILE": "/x.env"}) == "/given.env"
    present = tmp_path / "backup.env"
    present.write_text("")
    monkeypatch.setattr(config, "DEFAULT_ENV_FILE", str(present))
    assert config.env_file_path(None, {}) == str(present)


def test_a_missing_env_file_names_the_callers_option(tmp_path):
    with pytest.raises(ConfigError, match="or pass the env_file option$"):
        config.read_env_file(str(tmp_path / "nope.env"), flag="the env_file option")
    with pytest.raises(ConfigError, match="is a directory"):
        config.read_env_file(str(tmp_path))


# -- what an env file may hold beside the settings: libpq's pass-through and the process variables ----------------

# The variables the seed's scripts read (its README, /etc/quankey/backup.env and the monitor's OUTPUT_JSON, the
# restore's BACKUP_FILE): an env file the seed wrote holds them, and the engine reads every one.
SEED_VARIABLES = ("DB_HOST", "DB_PORT", "DB_NAME", "DB_USER", "PGPASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                  "S3_BUCKET", "BACKUP_ENCRYPTION_KEY", "BACKUP_RETENTION_DAYS", "BACKUP_FILE", "OUTPUT_JSON")


def _private(tmp_path, text, name="backup.env"):
    path = tmp_path / name
    path.write_text(text)
    os.chmod(str(path), 0o600)
    return str(path)


def test_each_variable_has_one_use_and_the_process_variables_are_no_settings():
    assert config.variable_use("DB_PORT") == config.variable_use("AWS_REGION") == "setting"
    assert config.variable_use("PGSSLROOTCERT") == config.variable_use("PGSYSCONFDIR") == "libpq"
    assert config.variable_use("HTTPS_PROXY") == config.variable_use("no_proxy") == "process"
    assert config.variable_use("REQUESTS_CA_BUNDLE") == config.variable_use("TZ") == "process"
    assert config.variable_use("AWS_CA_BUNDLE") == config.variable_use("AWS_PROFILE") == "setting"
    assert config.variable_use("AWS_MAX_ATTEMPTS") == config.variable_use("AWS_RETRY_MODE") == "setting"
    assert config.variable_use("BLAH") is config.variable_use("PGHOST") is config.variable_use("https_PROXY") is None
    assert not set(config.PROCESS_VARIABLES) & set(config.READ_VARIABLES)
    assert not [name for name in config.PROCESS_VARIABLES if config.is_pg_passthrough(name)]
    assert set(config.PROXY_VARIABLES) <= set(config.PROCESS_VARIABLES)
    assert len(set(config.PROCESS_VARIABLES)) == len(config.PROCESS_VARIABLES)
    # a variable with no effect here has a hint, and is not accepted (the engine would ignore it)
    assert [name for name in config.NO_EFFECT if config.variable_use(name) is not None] == []


def test_the_env_files_process_variables_fill_the_environment_which_wins():
    environ = {"NO_PROXY": "from-env", "TZ": "", "PATH": "/bin"}
    put = config.export_process_variables({"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": "from-file", "TZ": "UTC",
                                           "AWS_CA_BUNDLE": "", "DB_HOST": "h", "BLAH": "x"}, environ)
    assert sorted(put) == ["HTTPS_PROXY", "TZ"]
    assert environ == {"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": "from-env", "TZ": "UTC", "PATH": "/bin"}


@pytest.mark.parametrize("already", ["https_proxy", "HTTPS_PROXY"])
def test_a_proxy_the_environment_sets_in_either_case_is_not_replaced(already):
    # urllib reads both cases and the lower-case one wins: the file's must not beat the environment's in either
    environ = {already: "http://mine:8080"}
    assert config.export_process_variables({"HTTPS_PROXY": "http://file:3128", "https_proxy": "http://file:3128"},
                                           environ) == []
    assert environ == {already: "http://mine:8080"}


def test_the_process_environment_is_the_default(monkeypatch):
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "")  # empty is not set (as for the settings); undone after the test
    assert config.export_process_variables({"REQUESTS_CA_BUNDLE": "/etc/ssl/s3-ca.pem"}) == ["REQUESTS_CA_BUNDLE"]
    assert os.environ["REQUESTS_CA_BUNDLE"] == "/etc/ssl/s3-ca.pem"


def test_use_env_file_reads_warns_and_exports_in_one_call(tmp_path):
    path = _private(tmp_path, "DB_NAME=d\nHTTP_PROXY=http://proxy:3128\nPGSSLROOTCERT=/r.crt\nBLAH='the secret'\n")
    environ = {"HOME": "/root"}
    values, warnings = config.use_env_file(path, environ)
    assert values["DB_NAME"] == "d" and values["BLAH"] == "the secret"
    assert environ == {"HOME": "/root", "HTTP_PROXY": "http://proxy:3128"}  # no setting, no libpq variable, no BLAH
    assert warnings == ["BLAH in %s is not a variable quankey-backup reads: it has no effect (remove it; docs/CLI.md "
                        "says which variables an env file may set)" % path]


def test_each_unused_variable_is_warned_once_by_name_never_by_value(tmp_path):
    path = _private(tmp_path, "SSL_CERT_FILE=/ca.pem\nPGHOST=db.internal\nBLAH=s3cr3t\nBLAH=again\nS3_BUCKET=b\n")
    warnings = config.read_env_file(path)[1]
    assert [warning.split(" ", 1)[0] for warning in warnings] == ["SSL_CERT_FILE", "PGHOST", "BLAH"]
    assert "use AWS_CA_BUNDLE" in warnings[0] and "use DB_HOST" in warnings[1]
    assert all("in %s is not a variable quankey-backup reads: it has no effect" % path in warning for warning in warnings)
    assert not [warning for warning in warnings if "s3cr3t" in warning or "db.internal" in warning]


def test_what_the_engine_uses_is_never_warned_of(tmp_path):
    names = SEED_VARIABLES + config.READ_VARIABLES + config.PROCESS_VARIABLES + ("PGSSLMODE", "PGSERVICEFILE",
                                                                                 "PGSYSCONFDIR")
    path = _private(tmp_path, "".join("%s=x\n" % name for name in names))
    assert config.read_env_file(path)[1] == []


def test_a_proxy_urls_password_is_a_secret_to_mask():
    assert config.process_secrets({"HTTPS_PROXY": "http://user:pa%24s@proxy:3128", "http_proxy": "http://proxy:3128",
                                   "NO_PROXY": "localhost", "AWS_CA_BUNDLE": "http://x:not-a-proxy@y"}) == ["pa%24s"]
    assert config.process_secrets({"HTTPS_PROXY": "http://[broken"}) == []


def test_the_cli_doc_names_every_process_variable_and_each_that_has_no_effect():
    with open(CLI_DOC) as handle:
        section = handle.read().split("\n### Proxies, shared AWS files, web identity: process variables\n", 1)[1]
    section = section.split("\n#", 1)[0]
    named = set(re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", section))
    assert set(config.PROCESS_VARIABLES) <= named
    assert set(config.NO_EFFECT) <= named
