"""Shared fixtures for functional tests: real PostgreSQL and S3 from tests/testbed.py.

``pg_cluster`` and ``moto`` start once per test session (per xdist worker); ``testbed`` gives each
test module its own bucket (and encryption key) on them, so modules do not see each other's backups.
"""

import sys
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: `import testbed` works in every test

from testbed import MotoServer, PostgresCluster, Testbed  # noqa: E402  pylint: disable=wrong-import-position
import sampledb  # noqa: E402  pylint: disable=wrong-import-position


@pytest.fixture(scope="session")
def pg_cluster():
    """A running PostgreSQL cluster (password auth, loopback port), shared by the whole session."""
    with PostgresCluster() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def moto():
    """A running moto_server S3 endpoint, shared by the whole session."""
    with MotoServer() as server:
        yield server


@pytest.fixture(scope="module")
def testbed(pg_cluster, moto):  # pylint: disable=redefined-outer-name
    """A Testbed on the shared services with a fresh bucket (and encryption key) for this test module."""
    with Testbed(bucket=f"quankey-test-{uuid.uuid4().hex[:16]}", pg=pg_cluster, moto=moto) as bed:
        yield bed


@pytest.fixture
def s3(testbed):  # pylint: disable=redefined-outer-name
    """A boto3 S3 client of the test bed's endpoint, to look at what the command stored."""
    return testbed.moto.client()


@pytest.fixture(scope="module")
def source(testbed):  # pylint: disable=redefined-outer-name
    """A sample database (tests/sampledb.py: mixed types, schemas, partitions, a view) for this test module."""
    name = "shop_%s" % uuid.uuid4().hex[:8]
    testbed.pg.create_database(name)
    sampledb.fill(testbed.pg, name)
    return name
