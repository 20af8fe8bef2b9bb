# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""playbooks/adopt_seed_backups.yml on the taken-over host, in the order docs/MIGRATION.md gives: check mode
(nothing written), for real (copies beside the originals), again (nothing to do), then delete_originals. The host's
own command then lists every old backup under its place, and each restores equal to the database it was taken of.
The host's keys are its own IAM user's, holding the policy its role rendered with the statements for the seed's
layout (molecule.yml)."""

import hashlib
import json
import os
import re
import sys
from pathlib import Path

import pytest

from conftest import ROOT, playbook

sys.path.insert(0, str(ROOT / "tests"))
import sampledb  # noqa: E402  pylint: disable=wrong-import-position


@pytest.fixture(scope="module", autouse=True)
def _policies(policies_attached):
    return policies_attached


@pytest.fixture(scope="module")
def history(hostname):
    """What prepare.yml's seed_history.py made: each seed backup's name, derivation and the source's digests then."""
    path = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / ("seed-backups-%s.json" % hostname)
    return json.loads(path.read_text(encoding="utf-8"))


def _listing(host):
    return json.loads(host.check_output("runuser -u quankey-backup -- quankey-backup list --json"))["backups"]


def _seed_objects(admin_s3, services):
    found = []
    for prefix in ("metadata/", "backups/postgresql/"):
        listed = admin_s3.list_objects_v2(Bucket=services["s3"]["bucket"], Prefix=prefix, Delimiter="/")
        found += [item["Key"] for item in listed.get("Contents", [])]
    return sorted(found)


def _plain(out):
    return re.sub(r"\x1b\[[0-9;]*m", "", out)  # Molecule forces colour on


def _summary(out, hostname):
    lines = [line for line in _plain(out).splitlines() if '"msg": "%s: ' % hostname in line]
    assert len(lines) == 1, out
    return lines[0]


def _recap_changed(out, hostname):
    return int(re.search(r"^%s\s*:.*changed=(\d+)" % re.escape(hostname), _plain(out), re.MULTILINE).group(1))


def test_the_host_lists_the_seeds_backups_before_adoption(host, history):
    listed = _listing(host)
    assert sorted(item["name"] for item in listed if item.get("layout") == "seed") == sorted(
        item["name"] for item in history["backups"])
    assert [item for item in listed if item.get("layout") != "seed"] == []


def test_adoption_in_check_mode_verifies_each_and_writes_nothing(host, hostname, history, admin_s3, services):
    before = _seed_objects(admin_s3, services)
    status, out = playbook("adopt_seed_backups.yml", "--check")
    assert status == 0, out
    assert "quankey_prod: 3 would be adopted, 0 already adopted, 0 failed" in _summary(out, hostname)
    assert _recap_changed(out, hostname) == 1
    assert [item for item in _listing(host) if item.get("layout") != "seed"] == []
    assert _seed_objects(admin_s3, services) == before and len(before) == 2 * len(history["backups"])


def test_adoption_copies_every_seed_backup_under_the_hosts_place_and_keeps_the_originals(host, hostname, history,
                                                                                         admin_s3, services):
    status, out = playbook("adopt_seed_backups.yml")
    assert status == 0, out
    assert "quankey_prod: 3 adopted, 0 already adopted, 0 failed" in _summary(out, hostname)
    listed = _listing(host)
    ours = sorted((item["name"], item["host"], item["object_key"]) for item in listed if item.get("layout") != "seed")
    assert ours == sorted((item["name"], hostname, "backups/postgresql/%s/quankey_prod/%s.encrypted" % (hostname, item["name"]))
                          for item in history["backups"])
    assert len(_seed_objects(admin_s3, services)) == 2 * len(history["backups"])  # copies and originals coexist


def test_a_second_adoption_changes_nothing(hostname):
    status, out = playbook("adopt_seed_backups.yml")
    assert status == 0, out
    assert "quankey_prod: 0 adopted, 3 already adopted, 0 failed" in _summary(out, hostname)
    assert _recap_changed(out, hostname) == 0


def test_delete_originals_deletes_them_once_their_copies_verify(host, hostname, history, admin_s3, services):
    status, out = playbook("adopt_seed_backups.yml", "--check", "-e", "delete_originals=true")
    assert status == 0, out
    assert "3 original(s) would be deleted" in _summary(out, hostname)
    assert len(_seed_objects(admin_s3, services)) == 2 * len(history["backups"])
    status, out = playbook("adopt_seed_backups.yml", "-e", "delete_originals=true")
    assert status == 0, out
    assert "quankey_prod: 0 adopted, 3 already adopted, 0 failed, 3 original(s) deleted" in _summary(out, hostname)
    assert _seed_objects(admin_s3, services) == []
    listed = _listing(host)
    assert sorted(item["name"] for item in listed) == sorted(item["name"] for item in history["backups"])
    assert all(item["host"] == hostname and "layout" not in item for item in listed)


def test_each_adopted_backup_restores_equal_to_the_database_it_was_taken_of(host, history, postgres):
    for number, made in enumerate(history["backups"]):
        target = "adopted_%d" % number
        postgres.psql('DROP DATABASE IF EXISTS "%s"' % target)
        out = host.run("runuser -u quankey-backup -- quankey-backup restore --json --backup %s --target-db %s",
                       made["name"], target)
        assert out.rc == 0, out.stderr
        result = json.loads(out.stdout)
        assert result["trusted"] is True and result["signature"].startswith("valid")
        assert result["table_count"] == result["expected_table_count"] == sampledb.TABLE_COUNT
        assert sampledb.table_digests(postgres, target) == made["digests"], made["name"]
        postgres.psql('DROP DATABASE "%s"' % target)
    # the database changed between the backups: each copy is its own backup's, not the newest's
    assert len({json.dumps(made["digests"], sort_keys=True) for made in history["backups"]}) == len(history["backups"])
    # made by the seed's script on OpenSSL 1.0, on 1.1 before -pbkdf2, and as it is today
    derivations = ["EVP_BytesToKey MD5", "EVP_BytesToKey SHA256", "PBKDF2-HMAC-SHA256"]
    assert [made["kdf"] for made in history["backups"]] == derivations


def test_a_seed_backup_that_does_not_open_fails_the_run_by_name_after_the_summary(hostname, admin_s3, services):
    body = b"Salted__" + os.urandom(8) + os.urandom(64)  # no passphrase of the host opens it
    name = "quankey_backup_20250101_030000"
    meta = {"backup_type": "postgresql_full", "database": "quankey_prod", "timestamp": "20250101_030000",
            "size_bytes": len(body), "checksum_sha256": hashlib.sha256(body).hexdigest(), "encryption": "aes-256-cbc",
            "format": "pg_dump_custom", "retention_days": 30, "quantum_safe": True}
    bucket = services["s3"]["bucket"]
    admin_s3.put_object(Bucket=bucket, Key="backups/postgresql/%s.encrypted" % name, Body=body)
    admin_s3.put_object(Bucket=bucket, Key="metadata/%s.meta" % name, Body=json.dumps(meta).encode("utf-8"))
    try:
        status, out = playbook("adopt_seed_backups.yml")
        assert status != 0, out
        assert "quankey_prod: 0 adopted, 0 already adopted, 1 failed" in _summary(out, hostname)
        assert re.search(r'fatal: \[%s\]: FAILED! => .*"msg": "quankey_prod: %s: decrypt failed: none of the passphrases'
                         % (hostname, name), _plain(out)), out
        assert len(_seed_objects(admin_s3, services)) == 2  # left as it was
    finally:
        for key in ("backups/postgresql/%s.encrypted" % name, "metadata/%s.meta" % name):
            admin_s3.delete_object(Bucket=bucket, Key=key)
