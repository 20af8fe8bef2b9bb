# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""PostgreSQL over TLS (issue 14 item 4): the TLS settings become libpq's variables in the client programs'
environment, files libpq would not use are refused before a program runs, and libpq's TLS failures read as one line
naming the setting to change. tests/functional/test_pg_tls.py runs the same against a TLS-only server."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import re
import stat

import pytest

from ansible_collections.quankey.backup.plugins.module_utils import ansible_common, config
from ansible_collections.quankey.backup.plugins.module_utils.adapters import postgres
from ansible_collections.quankey.backup.plugins.module_utils.errors import ConfigError

TLS_VARIABLES = {"PGSSLMODE", "PGSSLROOTCERT", "PGSSLCERT", "PGSSLKEY"}


@pytest.fixture(autouse=True)
def no_default_env_file(monkeypatch, tmp_path):
    """A host's own /etc/quankey/backup.env stays out of these tests."""
    monkeypatch.setattr(config, "DEFAULT_ENV_FILE", str(tmp_path / "no-default.env"))


@pytest.fixture
def files(tmp_path):
    """A CA certificate, a client certificate and its key (0600) as files: {field: path}."""
    paths = {}
    for field, name, mode in (("db_ca_cert", "ca.crt", 0o644), ("db_ssl_cert", "client.crt", 0o644),
                              ("db_ssl_key", "client.key", 0o600)):
        path = tmp_path / name
        path.write_text("-----BEGIN PEM-----\n")
        path.chmod(mode)
        paths[field] = str(path)
    return paths


def _settings(**values):
    return config.Settings(**dict(dict(db_name="quankey_prod", db_password="pw"), **values))


# --------------------------------------------------------------------------- the settings and their variables

def test_the_tls_settings_become_libpqs_variables_in_the_client_environment(files):
    settings = _settings(db_sslmode="verify-full", **files)
    env = postgres.child_environment(settings, {"PATH": "/usr/bin"})
    assert {name: env[name] for name in TLS_VARIABLES} == {
        "PGSSLMODE": "verify-full", "PGSSLROOTCERT": files["db_ca_cert"], "PGSSLCERT": files["db_ssl_cert"],
        "PGSSLKEY": files["db_ssl_key"]}


def test_the_host_command_reads_them_from_its_variables(files):
    settings = config.settings_from_env({"DB_NAME": "d", "DB_SSLMODE": "verify-ca", "DB_SSLROOTCERT": files["db_ca_cert"],
                                         "DB_SSLCERT": files["db_ssl_cert"], "DB_SSLKEY": files["db_ssl_key"]})
    assert (settings.db_sslmode, settings.db_ca_cert, settings.db_ssl_cert, settings.db_ssl_key) == (
        "verify-ca", files["db_ca_cert"], files["db_ssl_cert"], files["db_ssl_key"])
    assert settings.label("db_ca_cert") == "DB_SSLROOTCERT"


def test_a_setting_wins_over_the_same_libpq_variable_passed_through(files):
    passed = {"PGSSLROOTCERT": "/env-file/root.crt", "PGSSLCERT": "/env-file/client.crt", "PGSSLKEY": "/env-file/k.key"}
    environ = {"PGSSLROOTCERT": "/environ/root.crt", "PGSSLKEY": "/environ/k.key", "PGSSLCRL": "/environ/crl.pem"}
    env = postgres.child_environment(_settings(db_ca_cert=files["db_ca_cert"], pg_passthrough=passed), environ)
    assert env["PGSSLROOTCERT"] == files["db_ca_cert"]  # the setting
    assert (env["PGSSLCERT"], env["PGSSLKEY"]) == ("/env-file/client.crt", "/env-file/k.key")  # the env file's
    assert env["PGSSLCRL"] == "/environ/crl.pem"  # what nothing else sets: the environment's


def test_without_tls_settings_no_tls_variable_is_made():
    env = postgres.child_environment(_settings(), {"PATH": "/usr/bin"})
    assert not TLS_VARIABLES & set(env)


@pytest.mark.parametrize("variable", ["DB_SSLROOTCERT", "DB_SSLCERT", "DB_SSLKEY"])
def test_a_relative_path_is_refused_naming_the_variable(variable):
    with pytest.raises(ConfigError, match=r"^%s 'certs/x.pem' is not an absolute path: name the file from /" % variable):
        config.settings_from_env({"DB_NAME": "d", variable: "certs/x.pem"})


def test_the_settings_do_not_look_for_the_files_the_host_does():
    # the roles' settings_error filter checks settings on the controller, where the host's files are not
    settings = _settings(db_ca_cert="/nonexistent/ca.crt", db_ssl_key="/nonexistent/client.key")
    assert settings.db_ca_cert == "/nonexistent/ca.crt"


# --------------------------------------------------------------------------- module options

def test_module_options_and_the_alias_reach_the_client_environment(files):
    params = {"db": "d", "ssl_mode": "verify-full", "ca_cert": files["db_ca_cert"], "ssl_cert": files["db_ssl_cert"],
              "ssl_key": files["db_ssl_key"]}
    settings = ansible_common.settings_from_params(params, {})
    env = postgres.child_environment(settings, {})
    assert (env["PGSSLMODE"], env["PGSSLROOTCERT"], env["PGSSLCERT"], env["PGSSLKEY"]) == (
        "verify-full", files["db_ca_cert"], files["db_ssl_cert"], files["db_ssl_key"])
    assert settings.label("db_ca_cert") == "the ca_cert option"
    spec = ansible_common.postgres_argument_spec()
    assert spec["ca_cert"] == {"type": "path", "no_log": False, "aliases": ["ssl_rootcert"]}
    assert spec["ssl_cert"] == spec["ssl_key"] == {"type": "path", "no_log": False}


def test_module_options_fall_back_to_the_host_commands_variables(files, tmp_path):
    env_file = tmp_path / "backup.env"
    env_file.write_text("DB_SSLKEY=%s\n" % files["db_ssl_key"])
    env_file.chmod(0o600)
    settings = ansible_common.settings_from_params({"db": "d", "env_file": str(env_file)},
                                                   {"DB_SSLROOTCERT": files["db_ca_cert"]})
    assert settings.label("db_ca_cert") == "DB_SSLROOTCERT in %s" % ansible_common.ENVIRONMENT
    assert settings.label("db_ssl_key") == "DB_SSLKEY in %s" % env_file
    assert postgres.child_environment(settings, {})["PGSSLKEY"] == files["db_ssl_key"]


def test_a_relative_option_is_refused_naming_the_option():
    with pytest.raises(ConfigError, match=r"^the ssl_cert option 'client.crt' is not an absolute path"):
        ansible_common.settings_from_params({"db": "d", "ssl_cert": "client.crt"}, {})


# --------------------------------------------------------------------------- the files, before a program runs

def test_usable_files_pass(files):
    settings = _settings(**files)
    postgres.check_tls_files(settings, postgres.child_environment(settings, {}))


@pytest.mark.parametrize("field, variable, what", [
    ("db_ca_cert", "DB_SSLROOTCERT", "CA certificate"),
    ("db_ssl_cert", "DB_SSLCERT", "client certificate"),
    ("db_ssl_key", "DB_SSLKEY", "client certificate's private key"),
])
def test_a_missing_file_a_setting_names_is_refused_naming_it(files, tmp_path, field, variable, what):
    missing = str(tmp_path / "missing.pem")
    settings = config.settings_from_env({"DB_NAME": "d", variable: missing}, origin="/etc/quankey/backup.env")
    with pytest.raises(ConfigError) as caught:
        postgres.check_tls_files(settings, postgres.child_environment(settings, {}))
    assert str(caught.value) == ("the %s %s (%s in /etc/quankey/backup.env) does not exist: copy it there, or correct %s "
                                 "in /etc/quankey/backup.env" % (what, missing, variable, variable))


def test_a_directory_is_no_certificate(tmp_path):
    settings = _settings(db_ca_cert=str(tmp_path))
    with pytest.raises(ConfigError, match=r"CA certificate .* \(DB_SSLROOTCERT\) is not a regular file"):
        postgres.check_tls_files(settings, postgres.child_environment(settings, {}))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_an_unreadable_file_is_refused(files):
    os.chmod(files["db_ca_cert"], 0)
    settings = _settings(db_ca_cert=files["db_ca_cert"])
    with pytest.raises(ConfigError, match=r"cannot read the CA certificate .* permission denied"):
        postgres.check_tls_files(settings, postgres.child_environment(settings, {}))


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_key_libpq_would_refuse_is_refused_saying_chmod_0600(files, mode):
    os.chmod(files["db_ssl_key"], mode)
    settings = config.settings_from_env({"DB_NAME": "d", "DB_SSLCERT": files["db_ssl_cert"],
                                         "DB_SSLKEY": files["db_ssl_key"]})
    if os.stat(files["db_ssl_key"]).st_uid == 0 and not mode & (stat.S_IWGRP | stat.S_IXGRP | stat.S_IRWXO):
        postgres.check_tls_files(settings, postgres.child_environment(settings, {}))  # root's 0640: libpq takes it
        return
    with pytest.raises(ConfigError) as caught:
        postgres.check_tls_files(settings, postgres.child_environment(settings, {}))
    assert str(caught.value).startswith("the client certificate's private key %s (DB_SSLKEY) is mode %04o: libpq refuses "
                                        "a private key others can read: chmod 0600 %s" % (files["db_ssl_key"], mode,
                                                                                          files["db_ssl_key"]))


class _Stat:
    def __init__(self, uid, mode):
        self.st_uid = uid
        self.st_mode = stat.S_IFREG | mode


@pytest.mark.parametrize("uid, mode, refused", [
    (1000, 0o600, False), (1000, 0o400, False), (1000, 0o640, True), (1000, 0o604, True), (1000, 0o610, True),
    (0, 0o600, False), (0, 0o640, False), (0, 0o660, True), (0, 0o650, True), (0, 0o644, True), (0, 0o641, True),
])
def test_the_key_rule_is_libpqs(uid, mode, refused):
    # fe-secure-openssl.c: owned by root, u=rw,g=r (0640) or less; else u=rw (0600) or less
    assert postgres._libpq_refuses_key(_Stat(uid, mode)) is refused  # pylint: disable=protected-access


def test_the_users_own_key_variable_is_checked_too_and_named(files):
    os.chmod(files["db_ssl_key"], 0o644)
    settings = _settings(pg_passthrough={"PGSSLKEY": files["db_ssl_key"]})
    with pytest.raises(ConfigError, match=r"\(PGSSLKEY\) is mode 0644: .* chmod 0600"):
        postgres.check_tls_files(settings, postgres.child_environment(settings, {}))


def test_a_missing_file_of_the_users_own_variables_is_left_to_libpq(tmp_path):
    # with sslmode=require a missing root.crt is no error to libpq: only a setting's file must exist
    settings = _settings(pg_passthrough={"PGSSLROOTCERT": str(tmp_path / "none.crt")})
    postgres.check_tls_files(settings, postgres.child_environment(settings, {"PGSSLKEY": str(tmp_path / "none.key")}))


def test_libpq_16s_system_roots_are_passed_through_unchecked():
    settings = _settings(pg_passthrough={"PGSSLROOTCERT": "system"})
    postgres.check_tls_files(settings, postgres.child_environment(settings, {}))


def test_a_client_is_not_made_with_a_file_libpq_would_not_use(files, tmp_path, monkeypatch):
    monkeypatch.setattr(postgres.os, "environ", {"PATH": "/usr/bin"})
    for name in ("pg_dump", "psql", "pg_restore"):
        (tmp_path / name).write_text("#!/bin/sh\n")
    settings = _settings(pg_bin_dir=str(tmp_path), db_ca_cert=str(tmp_path / "nope.crt"))
    with pytest.raises(ConfigError, match=r"the CA certificate .*nope.crt \(DB_SSLROOTCERT\) does not exist"):
        postgres.PgClient(settings)
    assert postgres.PgClient(_settings(pg_bin_dir=str(tmp_path), **files)).environment()["PGSSLKEY"] == files["db_ssl_key"]


# --------------------------------------------------------------------------- libpq's TLS failures, in one line

FAILED = 'psql: error: connection to server at "127.0.0.1", port 5432 failed: '


@pytest.mark.parametrize("stderr, words", [
    (FAILED + 'root certificate file "/root/.postgresql/root.crt" does not exist\nEither provide the file or change '
              'sslmode to disable server certificate verification.',
     r"^PostgreSQL at db:5432: the sslmode \(DB_SSLMODE\) verifies the server's certificate, but libpq has no CA "
     r"certificate to verify it with \(it looked for /root/.postgresql/root.crt\): set DB_SSLROOTCERT to the CA "
     r"certificate that signed the server's, or set DB_SSLMODE to require"),
    (FAILED + "SSL error: certificate verify failed",
     r"^PostgreSQL at db:5432: its certificate is not signed by the CA certificate libpq was given \(DB_SSLROOTCERT\) "
     r"\(libpq: .*SSL error: certificate verify failed\): point DB_SSLROOTCERT at the CA"),
    (FAILED + 'server certificate for "localhost" (and 1 other name) does not match host name "db.internal"',
     r"its certificate is for localhost, not db.internal .*: set DB_HOST to a name the certificate holds, or "
     r"DB_SSLMODE to verify-ca"),
    (FAILED + 'private key file "/etc/k.key" has group or world access; file must have permissions u=rw (0600) or less '
              'if owned by the current user, or permissions u=rw,g=r (0640) or less if owned by root',
     r"libpq refuses the private key /etc/k.key \(DB_SSLKEY\): others can read it: chmod 0600 /etc/k.key"),
    (FAILED + "FATAL:  connection requires a valid client certificate",
     r"wants a client certificate from user 'q' .*: set DB_SSLCERT and DB_SSLKEY"),
    (FAILED + 'FATAL:  certificate authentication failed for user "q"',
     r"refused the client certificate for user 'q' .*its CN must be the user's name"),
    (FAILED + "SSL error: tlsv1 alert unknown ca",
     r"does not trust the client certificate \(libpq: .*tlsv1 alert unknown ca\): it must be signed by a CA of the "
     r"server's ssl_ca_file"),
    (FAILED + 'FATAL:  pg_hba.conf rejects connection for host "127.0.0.1", user "q", database "d", no encryption',
     r"^PostgreSQL at db:5432 takes user 'q' only over TLS \(server: .*pg_hba.conf rejects connection for host "
     r"\"127.0.0.1\", user \"q\", database \"d\", no encryption\): set DB_SSLMODE to verify-full"),
    (FAILED + 'FATAL:  no pg_hba.conf entry for host "127.0.0.1", user "q", database "d", no encryption',
     r"only over TLS .*no pg_hba.conf entry"),
    (FAILED + "server does not support SSL, but SSL was required",
     r"does not offer TLS, but DB_SSLMODE asks for it"),
    (FAILED + 'could not open certificate file "/etc/c.crt": No such file or directory',
     r"libpq cannot use the TLS files .*could not open certificate file"),
    (FAILED + "SSL error: EVP lib", r"TLS with PostgreSQL at db:5432 failed \(libpq: .*EVP lib\): check that "
                                    r"DB_SSLROOTCERT is the CA"),
])
def test_tls_failures_read_as_one_line_naming_the_setting(stderr, words):
    message = postgres.explain_client_error(stderr, "db:5432", "q", "d")
    assert re.search(words, message), message
    assert "\n" not in message


def test_other_failures_are_no_tls_failures():
    assert postgres.explain_tls_error(FAILED + 'FATAL:  password authentication failed for user "q"', "db:5432", "q",
                                      lambda field: field) is None
    message = postgres.explain_client_error(FAILED + 'FATAL:  no pg_hba.conf entry for host "127.0.0.1", user "q", '
                                                     'database "d", SSL encryption', "db:5432", "q", "d")
    assert "(no pg_hba.conf entry): allow it in pg_hba.conf" in message


def test_tls_failures_name_the_module_options():
    labels = {"db_ca_cert": "the ca_cert option", "db_sslmode": "the ssl_mode option", "db_ssl_cert": "the ssl_cert option",
              "db_ssl_key": "the ssl_key option", "db_host": "the login_host option"}
    message = postgres.explain_client_error(FAILED + "SSL error: certificate verify failed", "db:5432", "q", "d",
                                            label=labels.get)
    assert message.endswith("point the ca_cert option at the CA that signed the server's certificate")
