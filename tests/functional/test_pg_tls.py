# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""PostgreSQL over TLS on the real test bed (issue 14 item 4).

A cluster of its own that takes TCP connections over TLS only (tests/testbed.py ``PostgresCluster(tls=...)``: its
certificate from a throwaway CA, tests/testca.py; hostssl lines only and ``hostnossl ... reject``; one role that logs
in by client certificate). Backups and restores through the host command with DB_SSLMODE=verify-full and
DB_SSLROOTCERT, with a client certificate instead of a password, and with libpq's own PGSSLROOTCERT in the env file;
and through the module with its ca_cert option (by its alias ssl_rootcert). What goes wrong (a CA that did not sign
the server's certificate, no CA at all, sslmode=disable, a key others can read) fails with one line naming the setting
to change, before anything is uploaded.
"""

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

import sampledb
from hostcommand import new_name, run_cli, run_module
from sampledb import table_digests
from testbed import PostgresCluster, Testbed, write_env_file
from testca import TestCA

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CERT_USER = "quankey_cert_admin"  # logs in by client certificate (pg_hba.conf `cert`): no password at all
EXIT_CONFIG, EXIT_POSTGRES = 3, 4


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return TestCA(tmp_path_factory.mktemp("pg-ca"))


@pytest.fixture(scope="module")
def tls_bed(ca, moto):
    """A TLS-only PostgreSQL cluster and the session's S3, a bucket of this module's, and a sample database."""
    with PostgresCluster(tls=ca, cert_users=(CERT_USER,)) as cluster:
        with Testbed(bucket="quankey-tls-%s" % uuid.uuid4().hex[:12], pg=cluster, moto=moto) as bed:
            cluster.psql("CREATE ROLE %s LOGIN SUPERUSER" % CERT_USER)
            bed.source = new_name("tls_shop")
            cluster.create_database(bed.source)
            sampledb.fill(cluster, bed.source, rows=2000, blobs=30)
            yield bed


@pytest.fixture
def env(tls_bed, ca):
    """The host command's variables for verify-full against the TLS-only cluster, under a prefix of the test's own."""
    values = tls_bed.backup_env(tls_bed.source)
    values.update(S3_PREFIX=new_name("tls"), BACKUP_HOST_ID="tls1", S3_RETRY_WINDOW_SECONDS="0",
                  DB_SSLMODE="verify-full", DB_SSLROOTCERT=str(ca.cert))
    return values


def _objects(tls_bed, prefix):
    listed = tls_bed.moto.client().list_objects_v2(Bucket=tls_bed.bucket, Prefix=prefix + "/")
    return [item["Key"] for item in listed.get("Contents", [])]


def _round_trip(tls_bed, env, *cli_args):
    """Back up and restore with ``env`` (and ``cli_args`` before the command); the restored copy must match."""
    result = json.loads(run_cli(env, *(cli_args + ("backup", "--json")), check=0).stdout)
    target = new_name("tls_restored")
    restore_args = cli_args + ("restore", "--backup", result["name"], "--target-db", target, "--json")
    restored = json.loads(run_cli(env, *restore_args, check=0).stdout)
    assert restored["target_db"] == target and restored["table_count"] == result["table_count"] == sampledb.TABLE_COUNT
    assert table_digests(tls_bed.pg, target) == table_digests(tls_bed.pg, tls_bed.source)
    return result


def test_the_server_takes_tcp_connections_over_tls_only(tls_bed):
    # what the other tests rely on: without TLS the server says no (the test bed's own psql uses verify-full)
    assert tls_bed.pg.psql("SELECT ssl FROM pg_catalog.pg_stat_ssl WHERE pid = pg_catalog.pg_backend_pid()").strip() == "t"
    plain = subprocess.run([str(tls_bed.pg.bindir / "psql"), "-X", "-h", tls_bed.pg.host, "-p", str(tls_bed.pg.port),
                            "-U", tls_bed.pg.user, "-d", "postgres", "-c", "SELECT 1"],
                           env={"PATH": os.environ["PATH"], "PGPASSWORD": tls_bed.pg.password, "PGSSLMODE": "disable"},
                           capture_output=True, text=True, check=False)
    assert plain.returncode != 0 and "pg_hba.conf rejects connection" in plain.stderr, plain.stderr


def test_backup_and_restore_with_verify_full_and_the_ca_setting(tls_bed, env):
    _round_trip(tls_bed, env)


def test_backup_and_restore_logging_in_by_client_certificate(tls_bed, env, ca, tmp_path):
    client = ca.client(CERT_USER)
    env.update(DB_USER=CERT_USER, DB_SSLCERT=str(client.cert), DB_SSLKEY=str(client.key), DB_HOST="localhost")
    del env["PGPASSWORD"]  # cert authentication: no password anywhere
    _round_trip(tls_bed, env)


def test_libpqs_own_variables_in_the_env_file_work_too(tls_bed, env, ca, tmp_path):
    for name in ("DB_SSLMODE", "DB_SSLROOTCERT"):
        del env[name]
    env_file = tmp_path / "backup.env"
    write_env_file(env_file, {"PGSSLMODE": "verify-full", "PGSSLROOTCERT": str(ca.cert)})
    _round_trip(tls_bed, env, "--env-file", str(env_file))


def test_a_ca_that_did_not_sign_the_servers_certificate_fails_naming_the_setting_and_uploads_nothing(
        tls_bed, env, tmp_path):
    other = TestCA(tmp_path / "other-ca", name="some other CA")
    env["DB_SSLROOTCERT"] = str(other.cert)
    proc = run_cli(env, "backup", check=EXIT_POSTGRES)
    assert ("PostgreSQL at %s:%s: its certificate is not signed by the CA certificate libpq was given (DB_SSLROOTCERT) "
            "(libpq: " % (tls_bed.pg.host, tls_bed.pg.port)) in proc.stderr, proc.stderr
    assert "SSL error: certificate verify failed): point DB_SSLROOTCERT at the CA that signed the server's " \
           "certificate" in proc.stderr, proc.stderr
    assert _objects(tls_bed, env["S3_PREFIX"]) == []


def test_verify_full_without_a_ca_says_where_libpq_looked_and_what_to_set(tls_bed, env, tmp_path):
    del env["DB_SSLROOTCERT"]
    env["HOME"] = str(tmp_path)  # no ~/.postgresql/root.crt there
    proc = run_cli(env, "backup", check=EXIT_POSTGRES)
    assert ("the sslmode (DB_SSLMODE) verifies the server's certificate, but libpq has no CA certificate to verify it "
            "with (it looked for %s/.postgresql/root.crt): set DB_SSLROOTCERT to the CA certificate that signed the "
            "server's" % tmp_path) in proc.stderr, proc.stderr
    assert _objects(tls_bed, env["S3_PREFIX"]) == []


def test_sslmode_disable_against_a_tls_only_server_surfaces_its_pg_hba_line(tls_bed, env):
    env["DB_SSLMODE"] = "disable"
    proc = run_cli(env, "backup", check=EXIT_POSTGRES)
    assert "takes user 'postgres' only over TLS (server: " in proc.stderr, proc.stderr
    assert ('pg_hba.conf rejects connection for host "127.0.0.1", user "postgres", database "%s", no encryption): set '
            'DB_SSLMODE to verify-full' % tls_bed.source) in proc.stderr, proc.stderr
    assert _objects(tls_bed, env["S3_PREFIX"]) == []


def test_a_key_others_can_read_is_refused_before_pg_dump_runs(tls_bed, env, ca, tmp_path):
    client = ca.client(CERT_USER, stem="loose")
    loose = tmp_path / "loose.key"
    shutil.copyfile(client.key, loose)
    loose.chmod(0o644)
    env.update(DB_USER=CERT_USER, DB_SSLCERT=str(client.cert), DB_SSLKEY=str(loose))
    proc = run_cli(env, "backup", check=EXIT_CONFIG)
    assert ("the client certificate's private key %s (DB_SSLKEY) is mode 0644: libpq refuses a private key others can "
            "read: chmod 0600 %s" % (loose, loose)) in proc.stderr, proc.stderr
    assert _objects(tls_bed, env["S3_PREFIX"]) == []
    loose.chmod(0o600)  # as the message says: then it works
    json.loads(run_cli(env, "backup", "--json", check=0).stdout)


def test_a_missing_ca_file_is_refused_naming_the_setting(tls_bed, env, tmp_path):
    env["DB_SSLROOTCERT"] = str(tmp_path / "nope" / "ca.crt")
    proc = run_cli(env, "backup", check=EXIT_CONFIG)
    assert "the CA certificate %s (DB_SSLROOTCERT) does not exist: copy it there, or correct DB_SSLROOTCERT" % (
        env["DB_SSLROOTCERT"]) in proc.stderr, proc.stderr
    assert _objects(tls_bed, env["S3_PREFIX"]) == []


# -- the module: its options (ca_cert by its alias ssl_rootcert) on the same server

_MODULE_PLAY = """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: Back up over TLS
      quankey.backup.pg_encrypted_backup:
        login_host: "{{ pg.host }}"
        login_port: "{{ pg.port }}"
        login_user: "{{ pg.user }}"
        login_password: "{{ pg.password }}"
        db: "{{ pg.db }}"
        ssl_mode: verify-full
        ssl_rootcert: "{{ pg.ca }}"
        bucket: "{{ s3.bucket }}"
        prefix: "{{ s3.prefix }}"
        host_id: tls1
        region: "{{ s3.region }}"
        endpoint_url: "{{ s3.endpoint }}"
        access_key: "{{ s3.access_key }}"
        secret_key: "{{ s3.secret_key }}"
        encryption_key: "{{ key }}"
        lock_file: "{{ lock_file }}"
"""


def _module_backup(tmp_path, tls_bed, env, ca_path):
    """pg_encrypted_backup played by ansible-playbook (this checkout's collection) with ``ca_path`` as ssl_rootcert."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "play.yml").write_text(_MODULE_PLAY)
    variables = {
        "pg": {"host": tls_bed.pg.host, "port": tls_bed.pg.port, "user": tls_bed.pg.user, "password": tls_bed.pg.password,
               "db": tls_bed.source, "ca": str(ca_path)},
        "s3": {"bucket": tls_bed.bucket, "prefix": env["S3_PREFIX"], "region": tls_bed.moto.region,
               "endpoint": tls_bed.moto.endpoint_url, "access_key": tls_bed.moto.access_key,
               "secret_key": tls_bed.moto.secret_key},
        "key": env["BACKUP_ENCRYPTION_KEY"], "lock_file": str(tmp_path / "backup.lock"),
        "ansible_python_interpreter": sys.executable}
    descriptor = os.open(str(tmp_path / "vars.json"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        json.dump(variables, handle)
    return run_module(tmp_path, "ansible-playbook", str(tmp_path / "play.yml"), "-e", "@%s" % (tmp_path / "vars.json"))


def test_the_module_backs_up_over_tls_with_its_ca_option(tls_bed, env, ca, tmp_path):
    result = _module_backup(tmp_path, tls_bed, env, ca.cert)
    assert result.get("changed") and not result.get("failed"), result
    target = new_name("tls_module_restored")
    run_cli(env, "restore", "--backup", result["backup"]["name"], "--target-db", target, check=0)
    assert table_digests(tls_bed.pg, target) == table_digests(tls_bed.pg, tls_bed.source)


def test_the_module_names_its_option_when_the_ca_is_wrong(tls_bed, env, tmp_path):
    other = TestCA(tmp_path / "other-ca", name="some other CA")
    result = _module_backup(tmp_path / "run", tls_bed, env, other.cert)
    assert result.get("failed"), result
    assert "its certificate is not signed by the CA certificate libpq was given (the ca_cert option)" in result["msg"]
    assert _objects(tls_bed, env["S3_PREFIX"]) == []


# -- the pg_backup role checks the TLS files on the host before it installs anything

_ROLE_PLAY = """
- hosts: localhost
  gather_facts: false
  tasks:
    - ansible.builtin.include_role:
        name: quankey.backup.pg_backup
        tasks_from: tls_files
"""
_ROLE_CHECK_TASK = "Fail unless the backup user can read each TLS file and libpq would take the key"


def _role_check(tmp_path, **role_vars):
    """The pg_backup role's TLS file check on this machine (local connection, in check mode): (status, output)."""
    work = tmp_path / "role"
    collections = work / "collections" / "ansible_collections" / "quankey"
    collections.mkdir(parents=True)
    (collections / "backup").symlink_to(ROOT)
    (work / "play.yml").write_text(_ROLE_PLAY)
    (work / "vars.json").write_text(json.dumps(dict(role_vars, ansible_python_interpreter=sys.executable)))
    process = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(work / "collections"), ANSIBLE_HOME=str(work / "home"),
                   ANSIBLE_LOCAL_TEMP=str(work / "tmp"), ANSIBLE_NOCOLOR="1", ANSIBLE_RETRY_FILES_ENABLED="false")
    proc = subprocess.run([str(BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local", "--check",
                           str(work / "play.yml"), "-e", "@%s" % (work / "vars.json")], env=process,
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, timeout=300, check=False)
    return proc.returncode, proc.stdout


def test_the_role_takes_tls_files_the_backup_user_can_use(tmp_path, ca):
    client = ca.client("role_ok", stem="role-ok")  # the key: mode 0600, owned by this (root) user
    status, out = _role_check(tmp_path, pg_backup_user="root", pg_backup_group="root", pg_backup_db_ca_cert=str(ca.cert),
                              pg_backup_db_ssl_cert=str(client.cert), pg_backup_db_ssl_key=str(client.key))
    assert status == 0 and _ROLE_CHECK_TASK in out, out
    assert "ok: [localhost] => (item=pg_backup_db_ssl_key)" in out, out


def test_the_role_refuses_a_key_libpq_would_refuse_and_a_missing_ca_naming_the_variables(tmp_path, ca):
    client = ca.client("role_loose", stem="role-loose")
    loose = tmp_path / "loose.key"
    shutil.copyfile(client.key, loose)
    loose.chmod(0o644)
    status, out = _role_check(tmp_path, pg_backup_user="root", pg_backup_group="root",
                              pg_backup_db_ca_cert=str(tmp_path / "missing-ca.crt"), pg_backup_db_ssl_cert=str(client.cert),
                              pg_backup_db_ssl_key=str(loose))
    assert status == 2, out
    assert "pg_backup_db_ca_cert: %s does not exist on localhost" % (tmp_path / "missing-ca.crt") in out, out
    assert ("pg_backup_db_ssl_key: %s is owned by root:root, mode 0644: root, the user the backups run as, must read it, "
            "and libpq refuses a private key others can read: chown root %s and chmod 0600 %s" % (loose, loose, loose)
            ) in out, out
    assert "ok: [localhost] => (item=pg_backup_db_ssl_cert)" in out, out


def test_the_role_refuses_a_key_the_backup_user_cannot_read(tmp_path, ca):
    client = ca.client("role_other", stem="role-other")  # root's, 0600: libpq would take it, the backup user not read it
    status, out = _role_check(tmp_path, pg_backup_user="quankey-backup", pg_backup_group="quankey-backup",
                              pg_backup_db_ssl_key=str(client.key))
    assert status == 2, out
    assert "pg_backup_db_ssl_key: %s is owned by root:root, mode 0600" % client.key in out, out
    assert "chown quankey-backup %s and chmod 0600" % client.key in out, out
