# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Debian 13 beside Debian 12, and the dump/restore major upgrade: pg15's PostgreSQL 15 backup, made by pg_dump 15 on
Debian 12, restored with playbooks/restore.yml into the PostgreSQL 17 server of pg17 (Debian 13, Python 3.13) by its
pg_restore 17, every table equal to the source's."""

import json
import sys

import pytest

from conftest import ROOT, playbook, read_env_file

sys.path.insert(0, str(ROOT / "tests"))
import sampledb  # noqa: E402  pylint: disable=wrong-import-position

SOURCE_DB = "app_pg15"
TARGET_DB = "app_pg15_on_17"
# each host: its Debian release, its python3 (the engine's virtualenv), the PostgreSQL client the role installed
HOSTS = {"pg15": ("bookworm", "3.11", 15), "pg17": ("trixie", "3.13", 17)}


@pytest.fixture(scope="module", autouse=True)
def _policies(policies_attached):
    return policies_attached


@pytest.mark.parametrize("name", sorted(HOSTS))
def test_the_role_installs_the_engine_on_the_distributions_python_and_its_postgresql_client(hosts, name):
    codename, python, major = HOSTS[name]
    host = hosts[name]
    assert "VERSION_CODENAME=%s" % codename in host.file("/etc/os-release").content_string
    # the virtualenv runs the host's python3 and imports the engine with its compiled wheels (cryptography, zstandard)
    out = host.check_output("/opt/quankey-backup/venv/bin/python -c %s",
                            "import sys, quankey_backup.cli, cryptography.hazmat.bindings._rust, zstandard; "
                            "print('%d.%d' % sys.version_info[:2])")
    assert out.strip() == python
    # the client of the server's major version (pg17's role found the 17 server; pg15 has none: Debian 12's 15)
    env = read_env_file(host)
    assert env["PG_BIN_DIR"] == "/usr/lib/postgresql/%d/bin" % major
    assert host.package("postgresql-client-%d" % major).is_installed
    installed = host.check_output("ls -d /usr/lib/postgresql/*/bin/pg_restore").split()
    assert installed == ["/usr/lib/postgresql/%d/bin/pg_restore" % major]
    assert host.check_output("%s/pg_restore --version", env["PG_BIN_DIR"]).startswith("pg_restore (PostgreSQL) %d." % major)


def test_a_postgresql_15_backup_restores_into_postgresql_17_equal_to_its_source(hosts, pg17, postgres_utc):
    # pg15 backs up its PostgreSQL 15 database, as cron does
    run = hosts["pg15"].run("runuser -u quankey-backup -- sh -c '/usr/local/sbin/quankey-backup-run >> "
                            "/var/log/quankey/backup.log 2>&1'")
    assert run.rc == 0, hosts["pg15"].file("/var/log/quankey/backup.log").content_string[-3000:]
    # pg17 sees it with its own keys: made from a 15 server by pg_dump 15
    listing = json.loads(hosts["pg17"].check_output("quankey-backup list --json --details --host pg15 --db %s", SOURCE_DB))
    backup = listing["backups"][0]
    assert backup["server_version"].startswith("15.") and backup["pg_dump_version"].startswith("15.")
    assert backup["trusted"] is True
    assert int(pg17.psql("SHOW server_version_num")) // 10000 == 17
    pg17.psql('DROP DATABASE IF EXISTS "%s"' % TARGET_DB)

    # the incident playbook, as an on-call engineer runs it on the replacement machine
    status, out = playbook("quankey.backup.restore", "-l", "pg17", "-e", "source_host=pg15", "-e", "db=%s" % SOURCE_DB,
                           "-e", "target_db=%s" % TARGET_DB)
    assert status == 0, out[-4000:]
    assert "restored %s" % backup["name"] in out and "into %s on pg17" % TARGET_DB in out
    assert "tables: %d restored, %d in the backup" % (sampledb.TABLE_COUNT, sampledb.TABLE_COUNT) in out

    # every row of every table, as in the source database on PostgreSQL 15
    source = sampledb.table_digests(postgres_utc, SOURCE_DB)
    assert all(not digest.startswith("0:") for digest in source.values())
    assert sampledb.table_digests(pg17, TARGET_DB) == source
    assert pg17.psql("SELECT count(*) FROM rich", db=TARGET_DB) == postgres_utc.psql("SELECT count(*) FROM rich", db=SOURCE_DB)


def test_the_postgresql_15_client_refuses_the_17_server_naming_the_client_to_install(hosts):
    # why pg17's role installed postgresql-client-17: pg15's pg_restore 15, pointed at the 17 server, is refused
    env17 = read_env_file(hosts["pg17"])
    out = hosts["pg15"].run("DB_HOST=127.0.0.1 DB_PORT=%s DB_USER=postgres PGPASSWORD=%s quankey-backup restore --db %s "
                            "--backup latest --target-db %s_by_15", env17["DB_PORT"], env17["PGPASSWORD"], SOURCE_DB,
                            SOURCE_DB)
    assert out.rc != 0
    assert "cannot restore into a PostgreSQL 17 server: install postgresql-client-17" in out.stderr, out.stderr
