# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Both entry points read their env file with config.use_env_file: the host command (cli.load_environment) and the
modules (ansible_common.settings_from_params) put its process variables into their environment where it does not set
them, and warn of each variable the engine does not use. tests/functional/test_env_process.py proves boto3 uses them."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import logging
import os

import pytest

from ansible_collections.quankey.backup.plugins.module_utils import ansible_common, cli, config

FILE = ("DB_NAME=d\nS3_BUCKET=b\nHTTPS_PROXY=http://user:pr0xy-pw@proxy.internal:3128\nNO_PROXY=169.254.169.254\n"
        "REQUESTS_CA_BUNDLE=/etc/ssl/s3-ca.pem\nAWS_CA_BUNDLE=/etc/ssl/s3.pem\nPGSSLROOTCERT=/etc/quankey/root.crt\n"
        "BLAH=never-shown\n")


@pytest.fixture(autouse=True)
def no_default_env_file(monkeypatch, tmp_path):
    """A host's own /etc/quankey/backup.env stays out of these tests."""
    monkeypatch.setattr(config, "DEFAULT_ENV_FILE", str(tmp_path / "no-default.env"))


@pytest.fixture
def env_file(tmp_path):
    path = tmp_path / "backup.env"
    path.write_text(FILE)
    os.chmod(str(path), 0o600)
    return str(path)


class _Records(logging.Handler):
    """What the command logs (its logger may not propagate to pytest's: cli._setup_logging)."""

    def __init__(self):
        logging.Handler.__init__(self, logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_the_host_command_exports_the_files_process_variables_and_warns_of_the_rest(env_file):
    environ, records = {"NO_PROXY": "localhost", "HOME": "/root"}, _Records()
    cli.LOG.addHandler(records)
    try:
        values = cli.load_environment(env_file, environ)
    finally:
        cli.LOG.removeHandler(records)
    assert environ == {"NO_PROXY": "localhost", "HOME": "/root", "HTTPS_PROXY": "http://user:pr0xy-pw@proxy.internal:3128",
                       "REQUESTS_CA_BUNDLE": "/etc/ssl/s3-ca.pem"}  # AWS_CA_BUNDLE is a setting: not exported
    assert values["DB_NAME"] == "d"
    assert records.messages == [config.unused_variable_warning("BLAH", env_file)]
    assert not [message for message in records.messages if "never-shown" in message or "pr0xy-pw" in message]


def test_the_host_commands_quankey_env_file_is_read_the_same_way(env_file):
    environ = {"QUANKEY_ENV_FILE": env_file}
    cli.load_environment(None, environ)
    assert environ["HTTPS_PROXY"].endswith("@proxy.internal:3128") and environ["NO_PROXY"] == "169.254.169.254"


def test_a_module_exports_the_files_process_variables_warns_and_masks_the_proxy_password(env_file):
    environ, warned, hidden = {"REQUESTS_CA_BUNDLE": "/mine.pem"}, [], []
    settings = ansible_common.settings_from_params({"env_file": env_file}, environ, warned.append, hidden.append)
    assert (settings.db_name, settings.bucket) == ("d", "b")
    assert settings.ca_bundle == "/etc/ssl/s3.pem" and settings.label("ca_bundle") == "AWS_CA_BUNDLE in %s" % env_file
    assert environ == {"REQUESTS_CA_BUNDLE": "/mine.pem", "HTTPS_PROXY": "http://user:pr0xy-pw@proxy.internal:3128",
                       "NO_PROXY": "169.254.169.254"}
    assert warned == [config.unused_variable_warning("BLAH", env_file)]
    assert "pr0xy-pw" in hidden
    assert settings.pg_user_environment() == {"PGSSLROOTCERT": "/etc/quankey/root.crt"}


def test_a_module_without_an_env_file_changes_no_environment():
    environ = {"HOME": "/root"}
    ansible_common.settings_from_params({"db": "d"}, environ)
    assert environ == {"HOME": "/root"}
