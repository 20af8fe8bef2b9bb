# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fixtures of every scenario's Molecule verify step (testinfra on chroot test hosts); each scenario's
``tests/conftest.py`` imports them (``from fixtures import *``).

``host`` is testinfra's chroot backend on the host's root directory (one ``chroot`` per command)
instead of Molecule's ansible backend (one ``ansible -m shell`` per command, 30 times slower).
Tests that take ``host`` run once per platform; ``hostname`` names it.
"""

import json
import os
import subprocess
from pathlib import Path

import boto3
import pytest
import testinfra
import yaml
from botocore.config import Config

ROOT = Path(__file__).resolve().parents[2]


def _env(name):
    value = os.environ.get(name)
    if not value:
        pytest.exit("%s is not set: run the tests through molecule verify" % name, returncode=2)
    return value


def _instances():
    with open(_env("MOLECULE_INSTANCE_CONFIG"), encoding="utf-8") as handle:
        return {item["instance"]: item["address"] for item in yaml.safe_load(handle)}


def pytest_generate_tests(metafunc):
    if "hostname" in metafunc.fixturenames:
        names = sorted(_instances())
        metafunc.parametrize("hostname", names, ids=names, scope="module")


@pytest.fixture(scope="session")
def instances():
    """{host name: its root directory}."""
    return _instances()


@pytest.fixture(scope="session")
def molecule_config():
    with open(_env("MOLECULE_FILE"), encoding="utf-8") as handle:
        return yaml.safe_load(handle)


@pytest.fixture(scope="session")
def services():
    """What create.yml started: PostgreSQL, S3 (moto, IAM enforced), each host's IAM user and databases."""
    return json.loads((Path(_env("MOLECULE_EPHEMERAL_DIRECTORY")) / "services.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def host(hostname, instances):
    return testinfra.get_host(instances[hostname], connection="chroot")


@pytest.fixture(scope="session")
def hosts(instances):
    return dict((name, testinfra.get_host(root, connection="chroot")) for name, root in instances.items())


@pytest.fixture(scope="module")
def host_vars(hostname, molecule_config):
    """The scenario's host variables of this host (what differs from the shared base config)."""
    return molecule_config["provisioner"]["inventory"]["host_vars"].get(hostname, {})


def s3_client(services, access_key, secret_key):
    """A boto3 S3 client on the test endpoint with these keys (no retries: a denial is final)."""
    return boto3.client("s3", endpoint_url=services["s3"]["endpoint_url"], region_name=services["s3"]["region"],
                        aws_access_key_id=access_key, aws_secret_access_key=secret_key,
                        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))


@pytest.fixture(scope="session")
def admin_s3(services):
    return s3_client(services, services["s3"]["admin_access_key"], services["s3"]["admin_secret_key"])


@pytest.fixture(scope="session")
def policies_attached(services, hosts):
    """Each host's IAM user holds exactly the policy its pg_backup role rendered (/etc/quankey/iam-policy.json)."""
    iam = boto3.client("iam", endpoint_url=services["s3"]["endpoint_url"], region_name=services["s3"]["region"],
                       aws_access_key_id=services["s3"]["admin_access_key"],
                       aws_secret_access_key=services["s3"]["admin_secret_key"])
    attached = {}
    for name, host in hosts.items():
        document = host.file("/etc/quankey/iam-policy.json").content_string
        iam.put_user_policy(UserName=services["hosts"][name]["iam_user"], PolicyName="quankey-backup",
                            PolicyDocument=document)
        attached[name] = json.loads(document)
    return attached


def playbook(name, *args):
    """Run a playbook on the scenario's inventory: ``quankey.backup.<name>`` (the collection under test, as installed)
    or ``<name>.yml`` (playbooks/ of the checkout). Returns (exit status, output)."""
    assert os.environ.get("ANSIBLE_COLLECTIONS_PATH"), "run the tests through molecule verify (the collection's path)"
    target = name if name.startswith("quankey.backup.") else str(ROOT / "playbooks" / name)
    command = ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], target, *args]
    done = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=600, check=False, env=dict(os.environ, ANSIBLE_NOCOLOR="1"))
    return done.returncode, done.stdout


def read_env_file(host, path="/etc/quankey/backup.env"):
    """The env file as the shell reads it (the seed sources it): {name: value}."""
    out = host.check_output("sh -c 'set -a; . %s; env -0'" % path)
    return dict(item.split("=", 1) for item in out.split("\0") if "=" in item)


class Postgres:
    """psql on the test cluster from the controller (the hosts reach the same cluster on loopback)."""

    def __init__(self, services):
        self.info = services["postgres"]

    def psql(self, sql, db="postgres"):
        env = dict(os.environ, PGHOST=self.info["host"], PGPORT=str(self.info["port"]), PGUSER=self.info["user"],
                   PGPASSWORD=self.info["password"])
        done = subprocess.run([os.path.join(self.info["bindir"], "psql"), "-X", "-At", "-v", "ON_ERROR_STOP=1",
                               "--dbname", db, "-c", sql], env=env, capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
        return done.stdout


@pytest.fixture(scope="session")
def postgres(services):
    return Postgres(services)
