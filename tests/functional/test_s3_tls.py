# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Issue 14 item 3 on the real test bed: S3 over HTTPS with a private CA.

A TLS-terminating proxy (tests/tlsproxy.py) with a certificate of a throwaway CA (tests/testca.py) sits in front of
the test bed's moto_server; S3_ENDPOINT_URL is its https:// URL. The installed command backs up, lists, verifies and
restores through it with AWS_CA_BUNDLE (in the environment or in the env file) naming that CA; a CA that did not sign
the certificate fails the first request with a message that says so and names the setting, and leaves nothing in the
bucket; S3_VALIDATE_CERTS=false works without a bundle, with a warning. What the bucket holds is checked on moto
directly, around the proxy."""

import json
import sys

import pytest

from hostcommand import new_name, run_cli, run_module
from sampledb import table_digests
from testbed import write_env_file
from testca import TestCA
from tlsproxy import TLSProxy


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    """The CA that signed the proxy's certificate (for localhost and 127.0.0.1)."""
    return TestCA(tmp_path_factory.mktemp("s3-ca"))


@pytest.fixture(scope="module")
def tls(testbed, ca):  # pylint: disable=redefined-outer-name
    """HTTPS in front of the test bed's S3 endpoint."""
    with TLSProxy(testbed.moto.endpoint_url, ca.server("s3")) as proxy:
        yield proxy


@pytest.fixture
def env(testbed, source, tls):  # pylint: disable=redefined-outer-name
    """The settings of the source database, S3 through HTTPS, each test under its own prefix; no CA bundle yet."""
    values = testbed.backup_env(source)
    values.update(S3_ENDPOINT_URL=tls.endpoint_url, S3_PREFIX=new_name("tls"), BACKUP_HOST_ID="db1",
                  S3_RETRY_WINDOW_SECONDS="5")
    return values


def _stored(s3, env):  # pylint: disable=redefined-outer-name
    """The keys under the test's prefix, as moto holds them (not through the proxy), and its open uploads."""
    bucket, prefix = env["S3_BUCKET"], env["S3_PREFIX"] + "/"
    keys = [item["Key"] for item in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]
    uploads = [item["Key"] for item in s3.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", [])]
    return keys, uploads


def test_backup_list_verify_and_restore_over_https_with_the_ca_bundle(testbed, source, env, ca, tls, s3):
    env["AWS_CA_BUNDLE"] = str(ca.cert)
    before = tls.handshakes
    result = json.loads(run_cli(env, "backup", "--json", check=0).stdout)
    keys, uploads = _stored(s3, env)
    assert sorted(key.rsplit(".", 1)[-1] for key in keys) == ["encrypted", "globals", "meta"] and uploads == []
    listed = json.loads(run_cli(env, "list", "--json", check=0).stdout)
    assert [item["name"] for item in listed["backups"]] == [result["name"]]
    verified = json.loads(run_cli(env, "verify", "--json", check=0).stdout)
    assert verified["checksum_ok"] and verified["table_count"] == result["table_count"]
    target = new_name("tls_restored")
    run_cli(env, "restore", "--target-db", target, check=0)
    assert table_digests(testbed.pg, target) == table_digests(testbed.pg, source)
    assert tls.handshakes > before  # every request went through TLS: the endpoint speaks nothing else


def test_the_ca_bundle_in_the_env_file_is_used_too(env, ca, tmp_path):
    path = str(tmp_path / "backup.env")
    write_env_file(path, dict(env, AWS_CA_BUNDLE=str(ca.cert)))
    proc = run_cli({}, "--env-file", path, "list", "--json", check=0)
    assert json.loads(proc.stdout)["backups"] == []
    assert "WARNING" not in proc.stderr, proc.stderr


def test_a_ca_that_did_not_sign_the_certificate_fails_clearly_and_stores_nothing(env, tls, s3, tmp_path):
    other = TestCA(tmp_path / "other-ca", name="not the S3 endpoint's CA")
    path = str(tmp_path / "backup.env")
    write_env_file(path, dict(env, AWS_CA_BUNDLE=str(other.cert)))
    refused = tls.refused
    proc = run_cli({}, "--env-file", path, "backup", check=5)
    message = [line for line in proc.stderr.splitlines() if "ERROR" in line]
    assert message, proc.stderr
    assert "TLS certificate verification failed for the S3 endpoint %s" % tls.endpoint_url in message[-1]
    assert "CERTIFICATE_VERIFY_FAILED" in message[-1]
    assert "checked against the CA bundle %s (AWS_CA_BUNDLE in %s); set AWS_CA_BUNDLE in %s to the CA certificate(s) " \
           "that signed it" % (other.cert, path, path) in message[-1]
    assert "retrying" not in proc.stderr  # a certificate does not get better by asking again
    assert tls.refused > refused
    assert _stored(s3, env) == ([], [])


def test_botocores_own_bundle_does_not_trust_a_private_ca_and_says_which_setting_to_set(env):
    proc = run_cli(env, "list", check=5)
    assert "TLS certificate verification failed" in proc.stderr
    assert "checked against botocore's default CA bundle (AWS_CA_BUNDLE is not set); set AWS_CA_BUNDLE" in proc.stderr


def test_validate_certs_false_works_without_a_bundle_and_warns(env):
    env["S3_VALIDATE_CERTS"] = "false"
    proc = run_cli(env, "list", "--json", check=0)
    assert json.loads(proc.stdout)["backups"] == []
    warnings = [line for line in proc.stderr.splitlines() if "WARNING" in line]
    assert len(warnings) == 1, proc.stderr
    assert "S3_VALIDATE_CERTS is false: the TLS certificate of the S3 endpoint %s is not checked" % env["S3_ENDPOINT_URL"] \
        in warnings[0]
    assert "set AWS_CA_BUNDLE to its CA certificate instead" in warnings[0]
    assert "InsecureRequestWarning" not in proc.stderr  # said once, by us


def test_a_ca_bundle_that_does_not_exist_is_a_configuration_error(env, tmp_path):
    env["AWS_CA_BUNDLE"] = str(tmp_path / "no-such-ca.pem")
    proc = run_cli(env, "list", check=3)
    assert "AWS_CA_BUNDLE %s is not a file that exists: point it at a PEM file of the CA certificate(s)" % \
        env["AWS_CA_BUNDLE"] in proc.stderr


# -- the modules: the same through their options (aws_ca_bundle, validate_certs, aws_config) ------------------------

def _module(tmp_path, args):
    """``quankey.backup.backup_info`` with ``args`` in a play on this machine (local connection); its result."""
    (tmp_path / "play.yml").write_text(
        "- hosts: localhost\n  gather_facts: false\n  tasks:\n    - quankey.backup.backup_info: %s\n" % json.dumps(args))
    return run_module(tmp_path, "ansible-playbook", str(tmp_path / "play.yml"),
                      "-e", "ansible_python_interpreter=%s" % sys.executable)


@pytest.fixture
def module_args(env, tmp_path):  # pylint: disable=redefined-outer-name
    """The module's options for the test's host, S3 through HTTPS, as amazon.aws users write them (aliases); an env
    file with nothing in it (a host's own /etc/quankey/backup.env stays out)."""
    empty = tmp_path / "empty.env"
    write_env_file(str(empty), {})
    return {"bucket": env["S3_BUCKET"], "prefix": env["S3_PREFIX"], "host_id": "db1", "db": env["DB_NAME"],
            "aws_endpoint_url": env["S3_ENDPOINT_URL"], "aws_access_key_id": env["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"], "aws_region": env["AWS_DEFAULT_REGION"],
            "env_file": str(empty)}


def test_a_module_reaches_s3_over_https_with_aws_ca_bundle_and_aws_config(tmp_path, module_args, ca):
    result = _module(tmp_path, dict(module_args, aws_ca_bundle=str(ca.cert),
                                    aws_config={"retries": {"max_attempts": 2, "mode": "standard"}, "read_timeout": 30}))
    assert not result.get("failed"), result
    assert result["backups"] == [] and not result.get("warnings"), result


def test_a_modules_wrong_ca_fails_naming_the_option(tmp_path, module_args):
    other = TestCA(tmp_path / "other-ca", name="not the S3 endpoint's CA")
    result = _module(tmp_path, dict(module_args, aws_ca_bundle=str(other.cert)))
    assert result.get("failed"), result
    assert "TLS certificate verification failed for the S3 endpoint" in result["msg"]
    assert "checked against the CA bundle %s (the aws_ca_bundle option); set the aws_ca_bundle option to the CA " \
           "certificate(s) that signed it" % other.cert in result["msg"], result["msg"]


def test_a_modules_validate_certs_false_warns_and_an_unknown_aws_config_key_fails(tmp_path, module_args):
    result = _module(tmp_path, dict(module_args, validate_certs=False))
    assert not result.get("failed"), result
    assert result.get("warnings") == [
        "the validate_certs option is false: the TLS certificate of the S3 endpoint %s is not checked, so anyone on the "
        "way can read and change the requests (backups stay encrypted, metadata signed); set the aws_ca_bundle option "
        "to its CA certificate instead" % module_args["aws_endpoint_url"]], result
    result = _module(tmp_path, dict(module_args, aws_config={"retrys": {"max_attempts": 3}}))
    assert result.get("failed") and "the aws_config option has retrys, which is not a parameter of botocore's " \
                                    "Config" in result["msg"], result
