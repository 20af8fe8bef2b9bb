# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The AWS options of the S3 store (issue 14 item 3): profile, region from botocore's chain, CA bundle, validate_certs,
aws_config and botocore's retries. Pure: clients are built, never used (no network); the AWS config files are
temporary ones. tests/functional/test_s3_tls.py and test_aws_options.py use them on the test bed."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import logging
import ssl

import pytest

from ansible_collections.quankey.backup.plugins.module_utils import config
from ansible_collections.quankey.backup.plugins.module_utils.adapters import s3 as storage
from ansible_collections.quankey.backup.plugins.module_utils.errors import ConfigError, StorageError

botocore = pytest.importorskip("botocore")
from botocore.exceptions import SSLError  # noqa: E402  pylint: disable=wrong-import-position

_AWS_VARIABLES = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_ACCESS_KEY_ID",
                  "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_CA_BUNDLE", "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE",
                  "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "REQUESTS_CA_BUNDLE")


@pytest.fixture(autouse=True)
def aws_files(monkeypatch, tmp_path):
    """No AWS variable of this process; an AWS config file with a profile ``backup`` (region eu-west-3, botocore
    retries) and a credentials file with its keys."""
    for name in _AWS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    files = {"config": tmp_path / "aws-config", "credentials": tmp_path / "aws-credentials"}
    files["config"].write_text("[profile backup]\nregion = eu-west-3\nmax_attempts = 7\nretry_mode = adaptive\n\n"
                               "[profile bare]\n")
    files["credentials"].write_text("[backup]\naws_access_key_id = AKIDBACKUP\naws_secret_access_key = s3cr3t\n\n"
                                    "[bare]\naws_access_key_id = AKIDBARE\naws_secret_access_key = s3cr3t\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(files["config"]))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(files["credentials"]))
    return files


def _store(**variables):
    variables.setdefault("S3_BUCKET", "b")
    return storage.S3Store.from_settings(config.settings_from_env(variables))


# -- the profile and the region -----------------------------------------------------------------------------------

def test_a_profile_gives_its_keys_region_and_retries():
    store = _store(AWS_PROFILE="backup")
    assert store.client.meta.region_name == store.region == "eu-west-3"
    assert store.client._request_signer._credentials.access_key == "AKIDBACKUP"  # pylint: disable=protected-access
    assert store.client.meta.config.retries == {"total_max_attempts": 7, "mode": "adaptive"}


def test_the_region_setting_wins_over_the_profiles_and_us_east_1_is_the_last_resort():
    assert _store(AWS_PROFILE="backup", AWS_REGION="ap-south-1").client.meta.region_name == "ap-south-1"
    assert _store(AWS_PROFILE="bare").client.meta.region_name == "us-east-1"
    assert _store().client.meta.region_name == "us-east-1"


def test_the_default_profile_of_the_config_file_gives_the_region_too(aws_files):
    with aws_files["config"].open("a") as handle:
        handle.write("[default]\nregion = sa-east-1\n")
    assert _store().region == "sa-east-1"


def test_a_missing_profile_names_itself_and_the_files_looked_at(aws_files):
    with pytest.raises(ConfigError) as failure:
        storage.S3Store.from_settings(config.settings_from_env({"S3_BUCKET": "b", "AWS_PROFILE": "nope"},
                                                               origin="/etc/quankey/backup.env"))
    assert str(failure.value) == (
        "AWS profile 'nope' (AWS_PROFILE in /etc/quankey/backup.env) is in neither %s nor %s: add it to one of them, "
        "point AWS_CONFIG_FILE or AWS_SHARED_CREDENTIALS_FILE at the files that hold it, or fix AWS_PROFILE in "
        "/etc/quankey/backup.env" % (aws_files["config"], aws_files["credentials"]))


@pytest.mark.parametrize("keys", [{"AWS_ACCESS_KEY_ID": "AKID", "AWS_SECRET_ACCESS_KEY": "s"}, {"AWS_SESSION_TOKEN": "t"}])
def test_a_profile_and_keys_are_mutually_exclusive(keys):
    with pytest.raises(ConfigError, match="AWS_PROFILE is set together with AWS_.*: a profile brings its own "
                                          "credentials, so set the profile or the keys, not both"):
        config.settings_from_env(dict(keys, AWS_PROFILE="backup"))
    with pytest.raises(ConfigError, match="the profile option is set together with the access_key option: a profile"):
        config.Settings(profile="backup", access_key="AKID", vocabulary=config.Vocabulary(options=True))


def test_aws_default_profile_is_read_after_aws_profile():
    assert config.settings_from_env({"AWS_DEFAULT_PROFILE": "bare"}).profile == "bare"
    assert config.settings_from_env({"AWS_DEFAULT_PROFILE": "bare", "AWS_PROFILE": "backup"}).profile == "backup"


# -- TLS ------------------------------------------------------------------------------------------------------------

def test_a_ca_bundle_must_be_a_file_that_exists(tmp_path):
    with pytest.raises(ConfigError, match="AWS_CA_BUNDLE %s is not a file that exists: point it at a PEM file"
                                          % (tmp_path / "none.pem")):
        _store(AWS_CA_BUNDLE=str(tmp_path / "none.pem"))
    with pytest.raises(ConfigError, match="is not a file that exists"):
        _store(AWS_CA_BUNDLE=str(tmp_path))
    bundle = tmp_path / "ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    assert _store(AWS_CA_BUNDLE=str(bundle)).ca_bundle == str(bundle)


def test_validate_certs_false_warns_once_and_ignores_the_bundle(caplog, tmp_path):
    with caplog.at_level(logging.WARNING, logger="quankey_backup"):
        store = _store(S3_VALIDATE_CERTS="false", S3_ENDPOINT_URL="https://s3.internal",
                       AWS_CA_BUNDLE=str(tmp_path / "not-there.pem"))
    assert store.ca_bundle is None
    assert [record.getMessage() for record in caplog.records] == [
        "S3_VALIDATE_CERTS is false: the TLS certificate of the S3 endpoint https://s3.internal is not checked, so "
        "anyone on the way can read and change the requests (backups stay encrypted, metadata signed); set "
        "AWS_CA_BUNDLE to its CA certificate instead"]
    with pytest.raises(ConfigError, match="S3_VALIDATE_CERTS must be true or false, got 'maybe'"):
        config.settings_from_env({"S3_VALIDATE_CERTS": "maybe"})


def _ssl_error(reason):
    return SSLError(endpoint_url="https://127.0.0.1:9443/b?list-type=2", error=ssl.SSLError(1, reason))


def test_a_certificate_no_trusted_ca_signed_names_the_bundle_and_the_setting():
    error = storage.translate_error(
        _ssl_error("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: unable to get local issuer certificate "
                   "(_ssl.c:1029)"), "ListObjectsV2", "b", "p/", "https://127.0.0.1:9443", ca_bundle="/etc/ssl/s3.pem")
    assert isinstance(error, StorageError) and not storage.is_transient(_ssl_error("x"))
    assert str(error) == (
        "TLS certificate verification failed for the S3 endpoint https://127.0.0.1:9443 (ListObjectsV2 of s3://b/p/: "
        "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: unable to get local issuer certificate): its "
        "certificate was checked against the CA bundle /etc/ssl/s3.pem (AWS_CA_BUNDLE); set AWS_CA_BUNDLE to the CA "
        "certificate(s) that signed it")
    default = storage.translate_error(_ssl_error("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed"),
                                      "ListObjectsV2", "b", "p/", "https://127.0.0.1:9443")
    assert "checked against botocore's default CA bundle (AWS_CA_BUNDLE is not set); set AWS_CA_BUNDLE" in str(default)


def test_other_tls_failures_point_at_the_endpoint():
    error = storage.translate_error(_ssl_error("[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1029)"),
                                    "ListObjectsV2", "b", "", "https://127.0.0.1:9000")
    assert str(error) == ("TLS with the S3 endpoint https://127.0.0.1:9000 failed (ListObjectsV2 of s3://b/: [SSL: "
                          "WRONG_VERSION_NUMBER] wrong version number): check that S3_ENDPOINT_URL is an https:// URL of "
                          "a TLS port, and AWS_CA_BUNDLE")


# -- aws_config and botocore's retries ------------------------------------------------------------------------------

def test_without_user_retries_every_retry_is_ours():
    assert storage.client_config(300).retries == {"total_max_attempts": 1, "mode": "standard"}
    assert storage.client_config(0).retries == {"total_max_attempts": 2, "mode": "standard"}
    assert (storage.client_config(45).connect_timeout, storage.client_config(45).read_timeout) == (10, 45)


def test_user_retries_layer_aws_config_over_the_variables_over_the_profile():
    profile = {"total_max_attempts": 7, "mode": "adaptive"}
    assert storage.client_config(300, profile_retries=profile).retries == profile
    assert storage.client_config(300, max_attempts=4, profile_retries=profile).retries == {
        "total_max_attempts": 4, "mode": "adaptive"}
    assert storage.client_config(300, max_attempts=4).retries == {"total_max_attempts": 4, "mode": "standard"}
    assert storage.client_config(300, retry_mode="legacy").retries == {"mode": "legacy"}
    asked = {"retries": {"max_attempts": 9}}
    assert storage.client_config(300, asked, max_attempts=4, retry_mode="adaptive").retries == {
        "max_attempts": 9, "mode": "adaptive"}  # aws_config's count (retries after the first) replaces the total


def test_aws_config_sets_any_botocore_parameter_and_its_timeouts_win():
    config_ = storage.client_config(45, {"connect_timeout": 3, "read_timeout": 600, "s3": {"addressing_style": "path"},
                                         "max_pool_connections": 20})
    assert (config_.connect_timeout, config_.read_timeout, config_.max_pool_connections) == (3, 600, 20)
    assert config_.s3 == {"addressing_style": "path"} and config_.signature_version == "s3v4"


def test_aws_max_attempts_and_aws_retry_mode_shape_the_client_from_the_settings():
    store = _store(AWS_MAX_ATTEMPTS="5", AWS_RETRY_MODE="adaptive", S3_CLIENT_CONFIG='{"read_timeout": 61}')
    assert store.client.meta.config.retries == {"total_max_attempts": 5, "mode": "adaptive"}
    assert store.client.meta.config.read_timeout == 61


@pytest.mark.parametrize("asked, words", [
    ({"retrys": {}}, "S3_CLIENT_CONFIG has retrys, which is not a parameter of botocore's Config: use its parameters"),
    ({"foo": 1, "bar": 2}, "S3_CLIENT_CONFIG has bar, foo, which are not parameters of botocore's Config"),
    ({"retries": {"mode": "eager"}}, "S3_CLIENT_CONFIG is refused by botocore's Config: Invalid value provided to "
                                     "\"mode\""),
    ({"retries": {"tries": 3}}, "S3_CLIENT_CONFIG is refused by botocore's Config: Cannot provide retry configuration "
                                "for \"tries\""),
    ({"retries": 3}, "S3_CLIENT_CONFIG: retries must be a mapping"),
    ({"connect_timeout": "soon"}, "S3_CLIENT_CONFIG: connect_timeout must be a number of seconds above 0, got 'soon'"),
    ({"read_timeout": 0}, "S3_CLIENT_CONFIG: read_timeout must be a number of seconds above 0, got 0"),
])
def test_what_botocore_would_not_take_is_a_configuration_error_naming_the_setting(asked, words):
    with pytest.raises(ConfigError) as failure:
        storage.client_config(300, asked, label=lambda field: config.FIELD_VARIABLES[field])
    assert words in str(failure.value)


@pytest.mark.parametrize("variables, words", [
    ({"S3_CLIENT_CONFIG": "retries=3"}, "S3_CLIENT_CONFIG is not valid JSON"),
    ({"S3_CLIENT_CONFIG": "[1, 2]"}, "S3_CLIENT_CONFIG must be a mapping of names to values (a JSON object), got list"),
    ({"AWS_MAX_ATTEMPTS": "0"}, "AWS_MAX_ATTEMPTS must be between 1 and 100, got 0"),
    ({"AWS_RETRY_MODE": "eager"}, "AWS_RETRY_MODE 'eager' is not a botocore retry mode: choose one of legacy, "
                                  "standard, adaptive"),
])
def test_bad_values_of_the_variables_are_refused_before_any_client(variables, words):
    with pytest.raises(ConfigError) as failure:
        config.settings_from_env(variables)
    assert words in str(failure.value)


def test_a_modules_aws_config_option_is_a_dict():
    settings = config.Settings(aws_config={"retries": {"mode": "standard"}}, vocabulary=config.Vocabulary(options=True))
    assert settings.aws_config == {"retries": {"mode": "standard"}}
    with pytest.raises(ConfigError, match="the aws_config option must be a mapping"):
        config.Settings(aws_config=["retries"], vocabulary=config.Vocabulary(options=True))
