# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Issue 14 item 3 on the real test bed: the AWS options as botocore users know them, through the installed command.

A named profile in a temporary AWS config and credentials file (AWS_CONFIG_FILE, AWS_SHARED_CREDENTIALS_FILE) holds
the test bed's keys and a region: AWS_PROFILE alone reaches the bucket, and the requests are signed for the profile's
region (the credential scope of each request's Authorization header, seen by a proxy, tests/faultproxy.py). A missing
profile, or a profile with keys, is a configuration error. AWS_MAX_ATTEMPTS turns botocore's own retries on: with
our retry window at 0, two 503 answers fail a listing without it and not with it."""

import json

import pytest

from faultproxy import FaultProxy
from hostcommand import new_name, run_cli
from testbed import write_env_file

REGION = "eu-west-3"
PROFILE = "quankey-backup"


@pytest.fixture
def proxy(testbed):
    """A recording proxy in front of the test bed's S3 endpoint (``seen``: every request, with its headers)."""
    with FaultProxy(testbed.moto.endpoint_url) as running:
        yield running


@pytest.fixture
def aws_files(testbed, tmp_path):
    """The AWS config and credentials files of one profile with the test bed's keys and REGION."""
    config, credentials = tmp_path / "aws-config", tmp_path / "aws-credentials"
    config.write_text("[profile %s]\nregion = %s\n" % (PROFILE, REGION))
    credentials.write_text("[%s]\naws_access_key_id = %s\naws_secret_access_key = %s\n"
                           % (PROFILE, testbed.moto.access_key, testbed.moto.secret_key))
    return {"AWS_CONFIG_FILE": str(config), "AWS_SHARED_CREDENTIALS_FILE": str(credentials)}


@pytest.fixture
def env(testbed, proxy):  # pylint: disable=redefined-outer-name
    """Settings for a host with no backups yet, S3 through the proxy, and neither keys nor a region."""
    values = testbed.backup_env(new_name("awsopt"))
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        del values[name]
    values.update(S3_ENDPOINT_URL=proxy.endpoint_url, S3_PREFIX=new_name("awsopt"), BACKUP_HOST_ID="db1")
    return values


def _signed_regions(proxy, first=0):  # pylint: disable=redefined-outer-name
    """The region of each request's SigV4 credential scope (Credential=<key>/<date>/<region>/s3/aws4_request), from
    the ``first`` request the proxy saw on."""
    seen = proxy.requests()[first:]
    assert seen, "no request reached S3"
    return set(item.headers["authorization"].split("Credential=", 1)[1].split("/")[2] for item in seen
               if "authorization" in item.headers)


def test_a_profile_gives_the_keys_and_its_region(env, aws_files, proxy):
    proc = run_cli(dict(env, AWS_PROFILE=PROFILE, **aws_files), "list", "--json", check=0)
    assert json.loads(proc.stdout)["backups"] == []
    assert _signed_regions(proxy) == {REGION}


def test_a_profile_from_the_env_file_too_and_the_region_setting_wins_over_the_profiles(env, aws_files, proxy, tmp_path):
    path = str(tmp_path / "backup.env")
    write_env_file(path, dict(env, AWS_PROFILE=PROFILE, **aws_files))
    proc = run_cli({}, "--env-file", path, "list", "--json", check=0)
    assert json.loads(proc.stdout)["backups"] == [] and "WARNING" not in proc.stderr, proc.stderr
    assert _signed_regions(proxy) == {REGION}
    first = len(proxy.requests())
    run_cli({"AWS_REGION": "ap-south-1"}, "--env-file", path, "list", check=0)
    assert _signed_regions(proxy, first) == {"ap-south-1"}


def test_without_any_region_the_fallback_is_us_east_1(env, aws_files, proxy):
    with open(aws_files["AWS_CONFIG_FILE"], "w") as handle:
        handle.write("[profile %s]\n" % PROFILE)
    run_cli(dict(env, AWS_PROFILE=PROFILE, **aws_files), "list", check=0)
    assert _signed_regions(proxy) == {"us-east-1"}


def test_a_missing_profile_is_a_configuration_error_naming_it_and_the_files(env, aws_files, proxy):
    proc = run_cli(dict(env, AWS_PROFILE="nope", **aws_files), "list", check=3)
    assert "AWS profile 'nope' (AWS_PROFILE) is in neither %s nor %s: add it to one of them" % (
        aws_files["AWS_CONFIG_FILE"], aws_files["AWS_SHARED_CREDENTIALS_FILE"]) in proc.stderr
    assert proxy.seen == []


def test_a_profile_and_keys_together_are_refused(env, testbed, aws_files, proxy):
    proc = run_cli(dict(env, AWS_PROFILE=PROFILE, AWS_ACCESS_KEY_ID=testbed.moto.access_key,
                        AWS_SECRET_ACCESS_KEY=testbed.moto.secret_key, **aws_files), "list", check=3)
    assert "AWS_PROFILE is set together with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY: a profile brings its own " \
           "credentials" in proc.stderr
    assert proxy.seen == []


def test_aws_max_attempts_turns_botocores_own_retries_on(env, testbed, proxy):
    keys = dict(env, AWS_ACCESS_KEY_ID=testbed.moto.access_key, AWS_SECRET_ACCESS_KEY=testbed.moto.secret_key,
                S3_RETRY_WINDOW_SECONDS="0")
    fault = proxy.fail(503, "SlowDown", count=2)
    run_cli(keys, "list", check=5)  # no retries of ours, botocore's two attempts: both answered 503
    assert fault.hits == 2
    fault = proxy.fail(503, "SlowDown", count=2)
    proc = run_cli(dict(keys, AWS_MAX_ATTEMPTS="3", AWS_RETRY_MODE="standard"), "list", "--json", check=0)
    assert json.loads(proc.stdout)["backups"] == [] and fault.hits == 2
    assert "retrying" not in proc.stderr  # botocore's retries, not ours (which log each)
