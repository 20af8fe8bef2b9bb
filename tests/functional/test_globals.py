# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Issue 19: complete loss of a server. Roles, memberships and settings come back with the data.

Two (and more) real PostgreSQL clusters. The first (the session's ``pg_cluster``) holds an application
as it is usually set up: an owner role that owns the tables, an application login that is a member of
it and logs in with a password, a read-only role with a grant (and a login in it), role and database
settings, CONNECT revoked from PUBLIC. It is backed up through the installed ``quankey-backup`` command
and restored onto brand-new clusters that have only their bootstrap superuser; psql then compares the
two servers. Attacks come from someone who can write the bucket but holds no key.
"""

import base64
import hashlib
import json
import os
import re
import subprocess
import uuid
from types import SimpleNamespace

import pytest

from ansible_collections.quankey.backup.plugins.module_utils.formats import crypto, signing
from hostcommand import new_name, run_cli
from sampledb import table_digests
from testbed import PostgresCluster

TABLES = ["app.orders", "public.notes"]
GLOBALS_FIELDS = {"object_key", "size_bytes", "checksum_sha256", "roles", "memberships", "tablespaces", "passwords"}
RESTORE_ROLE = "quankey_restore"  # BACKUP_RESTORE_ROLE's default: restore creates it on first use


# --------------------------------------------------------------------------- helpers

def _json(proc):
    return json.loads(proc.stdout)


def _on(cluster, env):
    """env pointed at another server (its superuser), as the on-call engineer does on the replacement."""
    return dict(env, DB_HOST=cluster.host, DB_PORT=str(cluster.port), DB_USER=cluster.user, PGPASSWORD=cluster.password)


def _names_sql(names):
    return ", ".join("'%s'" % name for name in sorted(names))


def _login(cluster, user, password, db, sql):
    """psql over TCP as user with password (the test bed's pg_hba asks every TCP login for a SCRAM password)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    env.update(PGHOST=cluster.host, PGPORT=str(cluster.port), PGUSER=user, PGPASSWORD=password, PGDATABASE=db,
               PGCONNECT_TIMEOUT="10")
    return subprocess.run([str(cluster.bindir / "psql"), "-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql], env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, check=False)


def _role_rows(cluster, names):
    """Every attribute of the roles, their password hashes and role-wide settings (pg_authid: superuser only)."""
    return cluster.psql("SELECT a.rolname, a.rolsuper, a.rolinherit, a.rolcreaterole, a.rolcreatedb, a.rolcanlogin, "
                        "a.rolreplication, a.rolbypassrls, a.rolconnlimit, a.rolvaliduntil, coalesce(a.rolpassword, '<none>'), "
                        "r.rolconfig FROM pg_authid a JOIN pg_roles r ON r.oid = a.oid WHERE a.rolname IN (%s) "
                        "ORDER BY a.rolname" % _names_sql(names))


def _memberships(cluster, names):
    """Who is a member of whom, for every membership that touches one of the roles."""
    return cluster.psql("SELECT r.rolname || ' has member ' || m.rolname || CASE WHEN a.admin_option THEN ' (admin)' "
                        "ELSE '' END FROM pg_auth_members a JOIN pg_roles r ON r.oid = a.roleid "
                        "JOIN pg_roles m ON m.oid = a.member WHERE r.rolname IN (%s) OR m.rolname IN (%s) ORDER BY 1"
                        % (_names_sql(names), _names_sql(names)))


def _db_role_settings(cluster, names, db):
    """pg_db_role_setting rows of the roles and of database db, role-wide or in db, with names instead of OIDs."""
    return cluster.psql("SELECT coalesce(d.datname, '<all databases>'), coalesce(r.rolname, '<all roles>'), s.setconfig "
                        "FROM pg_db_role_setting s LEFT JOIN pg_database d ON d.oid = s.setdatabase "
                        "LEFT JOIN pg_roles r ON r.oid = s.setrole "
                        "WHERE (r.rolname IN (%s) OR s.setrole = 0) AND (s.setdatabase = 0 OR d.datname = '%s') ORDER BY 1, 2"
                        % (_names_sql(names), db))


def _database_row(cluster, db):
    """The database's owner and its ACL as (grantor, grantee, privilege, grantable) rows, PUBLIC as 'PUBLIC'."""
    return cluster.psql("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '%s' UNION ALL "
                        "(SELECT pg_get_userbyid(a.grantor) || ' grants ' || a.privilege_type || ' to ' || "
                        "CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END || "
                        "CASE WHEN a.is_grantable THEN ' with grant option' ELSE '' END "
                        "FROM pg_database d, aclexplode(d.datacl) a WHERE d.datname = '%s' ORDER BY 1)" % (db, db))


OBJECTS_SQL = r"""
SELECT 'relation', n.nspname || '.' || c.relname, c.relkind::text, pg_get_userbyid(c.relowner), coalesce(c.relacl::text, '-')
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') AND c.relkind IN ('r', 'p', 'S', 'v', 'm', 'f')
UNION ALL
SELECT 'schema', nspname, '', pg_get_userbyid(nspowner), coalesce(nspacl::text, '-')
  FROM pg_namespace WHERE nspname NOT LIKE 'pg\_%' AND nspname <> 'information_schema'
UNION ALL
SELECT 'function', p.oid::regprocedure::text, '', pg_get_userbyid(p.proowner), coalesce(p.proacl::text, '-')
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
ORDER BY 1, 2
"""


def _objects(cluster, db):
    """Owner and ACL of every table, view, sequence, schema and function of db."""
    return cluster.psql(OBJECTS_SQL, db=db)


def _cluster_state(cluster):
    """The roles (but the restore role, which any restore creates on first use) and databases of a server."""
    roles = cluster.psql("SELECT rolname FROM pg_roles WHERE rolname NOT LIKE 'pg\\_%%' AND rolname <> '%s' "
                         "ORDER BY 1" % RESTORE_ROLE)
    return roles.split(), cluster.psql("SELECT datname FROM pg_database ORDER BY 1").split()


def _object_key_of_globals(result):
    return result["object_key"][:-len(".encrypted")] + ".globals"


def _metadata(s3, bucket, key):
    return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def _keys(s3, bucket, prefix):
    return [item["Key"] for item in s3.list_objects_v2(Bucket=bucket, Prefix=prefix + "/").get("Contents", [])]


# --------------------------------------------------------------------------- the application on the first server

def _make_application(pg, suffix):
    """An application as it is usually set up; returns its names and passwords."""
    app = SimpleNamespace(db="shop_%s" % suffix, owner="appowner_%s" % suffix, login="app_%s" % suffix,
                          readonly="readonly_%s" % suffix, reporter="reporter_%s" % suffix,
                          login_password="app-pw-" + uuid.uuid4().hex, reporter_password="rep-pw-" + uuid.uuid4().hex)
    app.roles = [app.owner, app.login, app.readonly, app.reporter]
    pg.psql("CREATE ROLE {owner} NOLOGIN; "
            "CREATE ROLE {login} LOGIN PASSWORD '{login_password}' CONNECTION LIMIT 20 "
            "  VALID UNTIL '2099-12-31 00:00:00+00' IN ROLE {owner}; "
            "CREATE ROLE {readonly} NOLOGIN; "
            "CREATE ROLE {reporter} LOGIN PASSWORD '{reporter_password}' IN ROLE {readonly}; "
            "ALTER ROLE {login} SET statement_timeout = '5s'".format(**vars(app)))
    pg.psql("CREATE DATABASE %s OWNER %s" % (app.db, app.owner))
    pg.psql("""
        SET ROLE {owner};
        CREATE SCHEMA app;
        CREATE TABLE app.orders (id bigserial PRIMARY KEY, customer text NOT NULL, total numeric(10, 2),
                                 placed timestamptz NOT NULL);
        INSERT INTO app.orders (customer, total, placed)
            SELECT 'customer ' || g, g * 1.5, timestamptz '2025-01-01' + g * interval '1 hour' FROM generate_series(1, 5000) g;
        CREATE TABLE public.notes (id int PRIMARY KEY, body text);
        INSERT INTO public.notes SELECT g, md5(g::text) FROM generate_series(1, 500) g;
        CREATE VIEW app.big_orders AS SELECT * FROM app.orders WHERE total > 100;
        CREATE FUNCTION app.order_count() RETURNS bigint LANGUAGE sql STABLE AS 'SELECT count(*) FROM app.orders';
        GRANT USAGE ON SCHEMA app TO {readonly};
        GRANT SELECT ON app.orders TO {readonly};
        RESET ROLE;
        ALTER ROLE {login} IN DATABASE {db} SET search_path = app, public;
        ALTER DATABASE {db} SET work_mem = '8MB';
        REVOKE CONNECT ON DATABASE {db} FROM PUBLIC;
        GRANT CONNECT ON DATABASE {db} TO {readonly};
    """.format(**vars(app)), db=app.db)
    return app


@pytest.fixture(scope="module")
def application(testbed):
    """The application on the first server (the session's cluster: role names carry a unique suffix)."""
    return _make_application(testbed.pg, uuid.uuid4().hex[:8])


@pytest.fixture(scope="module")
def backed_up(testbed, application):
    """One backup of the application's database, as the test bed's superuser: (env, backup result, stderr)."""
    env = testbed.backup_env(application.db)
    env.update(S3_PREFIX=new_name("globals"), BACKUP_HOST_ID="db1")
    proc = run_cli(env, "backup", "--json", check=0)
    return SimpleNamespace(env=env, result=_json(proc), stderr=proc.stderr)


@pytest.fixture(scope="module")
def bare():
    """A brand-new server with only its bootstrap superuser; the tests that use it must leave it so."""
    with PostgresCluster() as cluster:
        yield cluster


def _assert_left_as_it_was(cluster, before, target):
    assert _cluster_state(cluster) == before, "the failed restore left roles or databases behind"
    leftovers = cluster.psql("SELECT datname FROM pg_database WHERE datname LIKE '%s%%'" % target).split()
    assert leftovers == []


# --------------------------------------------------------------------------- backup, verify, list

def test_backup_captures_the_globals_as_a_separate_encrypted_object(testbed, application, backed_up):
    env, result = backed_up.env, backed_up.result
    s3, bucket = testbed.moto.client(), env["S3_BUCKET"]
    globals_ = result["globals"]
    assert set(globals_) == GLOBALS_FIELDS, globals_
    wanted_key = "%s/backups/postgresql/db1/%s/%s.globals" % (env["S3_PREFIX"], application.db, result["name"])
    assert globals_["object_key"] == wanted_key
    assert globals_["object_key"] == _object_key_of_globals(result)
    # the owner, the login in it, the read-only role (a grant and the database's CONNECT) and the login in that
    assert (globals_["roles"], globals_["memberships"], globals_["tablespaces"]) == (4, 2, 0), globals_
    assert globals_["passwords"] == "included"  # backed up as a superuser
    assert "WARNING" not in backed_up.stderr  # nothing left out

    stored = s3.get_object(Bucket=bucket, Key=globals_["object_key"])["Body"].read()
    assert len(stored) == globals_["size_bytes"]
    assert hashlib.sha256(stored).hexdigest() == globals_["checksum_sha256"]
    for plain in [application.owner, application.login, "SCRAM-SHA-256", "statement_timeout", "search_path"]:
        assert plain.encode() not in stored, "%s is readable in the stored globals object" % plain

    metadata = _metadata(s3, bucket, result["metadata_key"])
    assert metadata["metadata_version"] == 5
    assert metadata["globals"] == globals_
    assert "signature" in metadata


def test_verify_checks_the_globals_and_list_shows_them(backed_up):
    env, result = backed_up.env, backed_up.result
    verified = _json(run_cli(env, "verify", "--backup", result["name"], "--json", check=0))
    checked = dict(verified["globals"])
    assert checked.pop("ok") is True and checked.pop("warnings", []) == [], verified["globals"]
    assert checked == result["globals"]

    listed = _json(run_cli(env, "list", "--details", "--json", check=0))["backups"]
    assert [(item["name"], item["globals"]) for item in listed] == [(result["name"], result["globals"])]


# --------------------------------------------------------------------------- restore onto a brand-new server

def test_complete_loss_brings_back_roles_ownership_grants_settings_and_the_login(testbed, application, backed_up):
    source, db = testbed.pg, application.db
    with PostgresCluster() as replacement:
        assert _cluster_state(replacement)[0] == ["postgres"]  # nothing but the bootstrap superuser
        proc = run_cli(_on(replacement, backed_up.env), "restore", "--backup", backed_up.result["name"],
                       "--with-globals", "--target-db", db, "--json", check=0)
        report = _json(proc)["globals"]
        assert sorted(report["created_roles"]) == sorted(application.roles), report
        assert not set(report["existing_roles"]) & set(application.roles), report
        assert report["missing_tablespaces"] == []
        # the database's own setting and the login's in it (role-wide settings come with the role it created)
        assert report["settings_applied"] >= 2, report
        granted = json.dumps(report["memberships_granted"])
        assert len(report["memberships_granted"]) == 2 and application.login in granted and application.reporter in granted

        # data, and every object's owner and ACL
        assert table_digests(replacement, db, TABLES) == table_digests(source, db, TABLES)
        sequence = "SELECT last_value, is_called FROM app.orders_id_seq"
        assert replacement.psql(sequence, db=db) == source.psql(sequence, db=db)
        restored_objects = _objects(replacement, db)
        assert restored_objects == _objects(source, db)
        assert "app.orders|r|%s|" % application.owner in restored_objects  # the comparison is about the right thing
        # the roles: attributes, password hashes, role settings, memberships, per-database settings
        assert _role_rows(replacement, application.roles) == _role_rows(source, application.roles)
        assert _memberships(replacement, application.roles) == _memberships(source, application.roles)
        assert _db_role_settings(replacement, application.roles, db) == _db_role_settings(source, application.roles, db)
        assert "work_mem=8MB" in _db_role_settings(replacement, application.roles, db)
        # the database: owner, CONNECT for the read-only role and not for PUBLIC
        assert _database_row(replacement, db) == _database_row(source, db)
        assert not re.search(r"grants CONNECT to PUBLIC", _database_row(replacement, db))

        # the application logs in with its old password, over TCP, and gets its settings
        logged_in = _login(replacement, application.login, application.login_password, db,
                           "SELECT current_user, current_setting('search_path'), current_setting('statement_timeout'), "
                           "current_setting('work_mem'), order_count()")
        assert logged_in.returncode == 0, logged_in.stderr
        assert logged_in.stdout.strip() == "%s|app, public|5s|8MB|5000" % application.login
        writes = _login(replacement, application.login, application.login_password, db,
                        "WITH i AS (INSERT INTO orders (customer, placed) VALUES ('after the restore', now()) RETURNING customer) "
                        "SELECT customer FROM i")
        assert (writes.returncode, writes.stdout.strip()) == (0, "after the restore"), writes.stderr
        wrong = _login(replacement, application.login, "not-" + application.login_password, db, "SELECT 1")
        assert wrong.returncode != 0 and "password authentication failed" in wrong.stderr
        # the read-only login reads and cannot write; a stranger cannot even connect
        reads = _login(replacement, application.reporter, application.reporter_password, db, "SELECT count(*) FROM app.orders")
        assert (reads.returncode, reads.stdout.strip()) == (0, "5001"), reads.stderr
        writes = _login(replacement, application.reporter, application.reporter_password, db,
                        "DELETE FROM app.orders")
        assert writes.returncode != 0 and "permission denied" in writes.stderr
        replacement.psql("CREATE ROLE stranger LOGIN PASSWORD 'stranger-pw'")
        stranger = _login(replacement, "stranger", "stranger-pw", db, "SELECT 1")
        assert stranger.returncode != 0 and "permission denied for database" in stranger.stderr
        # nothing of the restore's machinery is left a member of the application's roles
        assert RESTORE_ROLE not in _memberships(replacement, application.roles)
        assert replacement.psql("SELECT datname FROM pg_database WHERE datname LIKE '%s\\_\\_%%'" % db).strip() == ""


def test_roles_that_exist_already_are_left_as_they_are_unless_forced(testbed, application, backed_up):
    name = backed_up.result["name"]
    with PostgresCluster() as server:
        env = _on(server, backed_up.env)
        run_cli(env, "restore", "--backup", name, "--with-globals", "--target-db", "first", check=0)
        # under another name than the source's, the database's settings are the restored database's
        first_settings = _db_role_settings(server, application.roles, "first")
        assert "first|<all roles>|{work_mem=8MB}" in first_settings
        assert 'first|%s|{"search_path=app, public"}' % application.login in first_settings
        # the DBA changed them since: connection limit, password, a setting, a membership, an attribute
        server.psql("ALTER ROLE {login} CONNECTION LIMIT 3 PASSWORD 'changed-pw'; ALTER ROLE {login} RESET statement_timeout; "
                    "ALTER ROLE {readonly} CREATEDB; REVOKE {readonly} FROM {reporter}".format(**vars(application)))
        before = (_role_rows(server, application.roles), _memberships(server, application.roles),
                  _db_role_settings(server, application.roles, "first"))
        assert before[0] != _role_rows(testbed.pg, application.roles)  # they do differ from the backup's now

        report = _json(run_cli(env, "restore", "--backup", name, "--with-globals", "--target-db", "second", "--json",
                               check=0))["globals"]
        assert sorted(set(report["existing_roles"]) & set(application.roles)) == sorted(application.roles), report
        assert not set(report["created_roles"]) & set(application.roles), report
        after = (_role_rows(server, application.roles), _memberships(server, application.roles),
                 _db_role_settings(server, application.roles, "first"))
        assert after == before
        assert table_digests(server, "second", TABLES) == table_digests(testbed.pg, application.db, TABLES)
        assert "app.orders|r|%s|" % application.owner in _objects(server, "second")
        new = _login(server, application.login, "changed-pw", "second", "SELECT current_user")
        assert (new.returncode, new.stdout.strip()) == (0, application.login), new.stderr
        old = _login(server, application.login, application.login_password, "second", "SELECT 1")
        assert old.returncode != 0 and "password authentication failed" in old.stderr

        # --force: the roles become the backup's again, and the old password works again
        forced = _json(run_cli(env, "restore", "--backup", name, "--with-globals", "--force", "--target-db", "third",
                               "--json", check=0))["globals"]
        assert not set(forced["created_roles"]) & set(application.roles), forced
        assert _role_rows(server, application.roles) == _role_rows(testbed.pg, application.roles)
        assert _memberships(server, application.roles) == _memberships(testbed.pg, application.roles)
        old = _login(server, application.login, application.login_password, "third", "SELECT current_user")
        assert (old.returncode, old.stdout.strip()) == (0, application.login), old.stderr


def test_without_with_globals_a_missing_role_fails_naming_the_option_and_leaves_nothing(application, backed_up, bare):
    before = _cluster_state(bare)
    target = new_name("noglobals")
    proc = run_cli(_on(bare, backed_up.env), "restore", "--backup", backed_up.result["name"], "--target-db", target)
    assert proc.returncode != 0, proc.stdout
    assert "--with-globals" in proc.stderr and application.readonly in proc.stderr, proc.stderr
    _assert_left_as_it_was(bare, before, target)


def test_a_failed_restore_drops_the_roles_it_created(testbed, bare):
    """The archive holds what the restore role may not create (an untrusted extension): the restore fails
    after the roles were created, and takes them away again."""
    suffix = uuid.uuid4().hex[:8]
    owner, db = "extowner_%s" % suffix, "withext_%s" % suffix
    testbed.pg.psql("CREATE ROLE %s LOGIN PASSWORD 'ext-pw'" % owner)
    testbed.pg.psql("CREATE DATABASE %s OWNER %s" % (db, owner))
    testbed.pg.psql("CREATE EXTENSION file_fdw; CREATE TABLE t (x int); INSERT INTO t VALUES (1); "
                    "ALTER TABLE t OWNER TO %s" % owner, db=db)
    env = dict(testbed.backup_env(db), S3_PREFIX=new_name("ext"), BACKUP_HOST_ID="db1")
    assert _json(run_cli(env, "backup", "--json", check=0))["globals"]["roles"] == 1

    before = _cluster_state(bare)
    target = new_name("withext")
    proc = run_cli(_on(bare, env), "restore", "--with-globals", "--target-db", target)
    assert proc.returncode != 0, proc.stdout
    assert "file_fdw" in proc.stderr, proc.stderr
    assert re.search(r"created role\S* [^\n]*%s" % owner, proc.stderr), proc.stderr  # it did get that far
    _assert_left_as_it_was(bare, before, target)


def _default_privileges(cluster, db):
    return cluster.psql("SELECT pg_get_userbyid(d.defaclrole), coalesce(n.nspname, '-'), d.defaclobjtype, d.defaclacl "
                        "FROM pg_default_acl d LEFT JOIN pg_namespace n ON n.oid = d.defaclnamespace ORDER BY 1, 2, 3",
                        db=db)


def test_default_privileges_of_the_owner_role_come_back_too(testbed):
    """The usual way a read-only role keeps reading new tables: ALTER DEFAULT PRIVILEGES FOR ROLE <owner>."""
    source = testbed.pg
    application = _make_application(source, uuid.uuid4().hex[:8])
    source.psql("ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA app GRANT SELECT ON TABLES TO {readonly}"
                .format(**vars(application)), db=application.db)
    env = dict(testbed.backup_env(application.db), S3_PREFIX=new_name("defacl"), BACKUP_HOST_ID="db1")
    run_cli(env, "backup", check=0)
    with PostgresCluster() as replacement:
        run_cli(_on(replacement, env), "restore", "--with-globals", "--target-db", application.db, check=0)
        assert _default_privileges(replacement, application.db) == _default_privileges(source, application.db)
        assert "{%s=r/%s}" % (application.readonly, application.owner) in _default_privileges(replacement, application.db)
        assert _objects(replacement, application.db) == _objects(source, application.db)


# --------------------------------------------------------------------------- an attacker who can write the bucket

@pytest.fixture(scope="module")
def intruder_backup(testbed):
    """A backup of another database whose globals hold a superuser role (also a member of pg_execute_server_program):
    what an attacker would love to plant."""
    suffix = uuid.uuid4().hex[:8]
    role, db = "intruder_%s" % suffix, "other_%s" % suffix
    testbed.pg.psql("CREATE ROLE %s SUPERUSER NOLOGIN IN ROLE pg_execute_server_program" % role)
    testbed.pg.psql("CREATE DATABASE %s OWNER %s" % (db, role))
    testbed.pg.psql("CREATE TABLE t (x int); ALTER TABLE t OWNER TO %s" % role, db=db)
    env = dict(testbed.backup_env(db), S3_PREFIX=new_name("intruder"), BACKUP_HOST_ID="db1")
    return SimpleNamespace(role=role, env=env, result=_json(run_cli(env, "backup", "--json", check=0)))


def _resign(s3, bucket, key, planted, master_key):
    """Make the signed metadata name the planted globals object: what only a holder of the key that signs
    metadata could do (to test the layer beneath the signature: the globals object is bound to its backup)."""
    metadata = _metadata(s3, bucket, key)
    metadata["globals"].update(size_bytes=len(planted), checksum_sha256=hashlib.sha256(planted).hexdigest())
    master = base64.b64decode(master_key)
    metadata = signing.sign_metadata(metadata, crypto.key_id(master), signing.derive_signing_key(master))
    s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(metadata).encode())


@pytest.mark.parametrize("planted_from,resigned,encryption", [
    ("another backup", False, "aes-256-gcm"),
    ("another database", False, "aes-256-gcm"),
    ("itself, one bit flipped", False, "aes-256-gcm"),
    ("another backup", True, "aes-256-gcm"),
    ("another backup", True, "aes-256-cbc"),  # one passphrase for all: only the document's binding is left
])
def test_a_swapped_or_damaged_globals_object_fails_verify_and_restore(testbed, application, bare, intruder_backup,
                                                                      planted_from, resigned, encryption):
    env = dict(testbed.backup_env(application.db), S3_PREFIX=new_name("swap"), BACKUP_HOST_ID="db1",
               BACKUP_ENCRYPTION=encryption)
    s3, bucket = testbed.moto.client(), env["S3_BUCKET"]
    victim = _json(run_cli(env, "backup", "--json", check=0))
    key = victim["globals"]["object_key"]
    if planted_from == "another backup":
        other = _json(run_cli(env, "backup", "--json", check=0))  # same database, same roles, a second later
        planted = s3.get_object(Bucket=bucket, Key=other["globals"]["object_key"])["Body"].read()
    elif planted_from == "another database":  # its globals hold a superuser role
        planted = s3.get_object(Bucket=bucket, Key=intruder_backup.result["globals"]["object_key"])["Body"].read()
    else:
        planted = bytearray(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        planted[len(planted) // 2] ^= 0x01
        planted = bytes(planted)
    s3.put_object(Bucket=bucket, Key=key, Body=planted)
    if resigned:
        _resign(s3, bucket, victim["metadata_key"], planted, env["BACKUP_ENCRYPTION_KEY"])

    verified = run_cli(env, "verify", "--backup", victim["name"], "--json")
    assert verified.returncode == 6, (verified.stdout, verified.stderr)
    assert re.search(r"ERROR [^\n]*globals", verified.stderr) and key in verified.stderr, verified.stderr  # names it

    before = _cluster_state(bare)
    target = new_name("swapped")
    restored = run_cli(_on(bare, env), "restore", "--backup", victim["name"], "--with-globals", "--target-db", target)
    assert restored.returncode == 6, (restored.stdout, restored.stderr)
    assert re.search(r"ERROR [^\n]*globals", restored.stderr) and key in restored.stderr, restored.stderr
    _assert_left_as_it_was(bare, before, target)
    assert intruder_backup.role not in _cluster_state(bare)[0]


def test_another_hosts_backup_creates_no_superuser_and_no_server_program_member(intruder_backup):
    """A backup from another host (whose keys may have been stolen there) recreates its roles, but nothing that
    reaches past a database."""
    role = intruder_backup.role
    with PostgresCluster() as server:
        env = _on(server, dict(intruder_backup.env, BACKUP_HOST_ID="db2"))
        report = _json(run_cli(env, "restore", "--host", "db1", "--with-globals", "--target-db", "copy", "--json",
                               check=0))["globals"]
        assert report["created_roles"] == [role], report
        assert role in json.dumps(report["skipped"]), report
        assert server.psql("SELECT rolsuper FROM pg_roles WHERE rolname = '%s'" % role).strip() == "f"
        assert server.psql("SELECT count(*) FROM pg_auth_members a JOIN pg_roles m ON m.oid = a.member "
                           "WHERE m.rolname = '%s'" % role).strip() == "0"


def test_a_backup_without_globals_ignores_a_globals_object_planted_next_to_it(testbed, application, backed_up, bare):
    env = dict(backed_up.env, S3_PREFIX=new_name("off"), BACKUP_GLOBALS="off")
    s3, bucket = testbed.moto.client(), env["S3_BUCKET"]
    result = _json(run_cli(env, "backup", "--json", check=0))
    assert result["globals"] is None
    assert [key for key in _keys(s3, bucket, env["S3_PREFIX"]) if key.endswith(".globals")] == []
    assert _metadata(s3, bucket, result["metadata_key"]).get("globals") is None

    # the attacker copies a real globals object (same database, same key) next to it
    forged = s3.get_object(Bucket=bucket, Key=backed_up.result["globals"]["object_key"])["Body"].read()
    s3.put_object(Bucket=bucket, Key=_object_key_of_globals(result), Body=forged)

    env.pop("BACKUP_GLOBALS")  # the replacement server's settings: globals on; the backup's metadata decides
    assert _json(run_cli(env, "verify", "--backup", result["name"], "--json", check=0))["globals"] is None
    listed = _json(run_cli(env, "list", "--details", "--json", check=0))["backups"]
    assert [(item["name"], item["globals"]) for item in listed] == [(result["name"], None)]
    before = _cluster_state(bare)
    target = new_name("forged")
    proc = run_cli(_on(bare, env), "restore", "--backup", result["name"], "--with-globals", "--target-db", target)
    assert proc.returncode != 0, proc.stdout
    assert re.search(r"no globals", proc.stderr, re.IGNORECASE), proc.stderr
    _assert_left_as_it_was(bare, before, target)


def test_with_globals_needs_signed_metadata_even_with_allow_unsigned(testbed, application, backed_up, bare):
    env = dict(backed_up.env, S3_PREFIX=new_name("unsigned"))
    s3, bucket = testbed.moto.client(), env["S3_BUCKET"]
    result = _json(run_cli(env, "backup", "--json", check=0))
    metadata = _metadata(s3, bucket, result["metadata_key"])
    del metadata["signature"]
    s3.put_object(Bucket=bucket, Key=result["metadata_key"], Body=json.dumps(metadata).encode())

    before = _cluster_state(bare)
    target = new_name("unsigned")
    proc = run_cli(_on(bare, env), "restore", "--backup", result["name"], "--with-globals", "--allow-unsigned",
                   "--target-db", target)
    assert proc.returncode != 0, proc.stdout
    assert re.search(r"ERROR [^\n]*--with-globals[^\n]*signature", proc.stderr), proc.stderr
    _assert_left_as_it_was(bare, before, target)


# --------------------------------------------------------------------------- a backup user that cannot read pg_authid

def test_a_non_superuser_backup_omits_the_passwords_and_says_so(testbed):
    """The backup user owns the database and its tables (enough for pg_dump) but may not read pg_authid.
    (A member of pg_read_all_data may: its backups do include the hashes.)"""
    suffix = uuid.uuid4().hex[:8]
    owner, member, db = "plainowner_%s" % suffix, "plainmember_%s" % suffix, "plain_%s" % suffix
    owner_password = "owner-pw-" + uuid.uuid4().hex
    testbed.pg.psql("CREATE ROLE %s LOGIN PASSWORD '%s'; CREATE ROLE %s LOGIN PASSWORD 'member-pw' IN ROLE %s"
                    % (owner, owner_password, member, owner))
    testbed.pg.psql("CREATE DATABASE %s OWNER %s" % (db, owner))
    testbed.pg.psql("SET ROLE %s; CREATE TABLE t (id serial PRIMARY KEY, v text); INSERT INTO t (v) VALUES ('x')" % owner,
                    db=db)
    cannot = _login(testbed.pg, owner, owner_password, db, "SELECT rolpassword FROM pg_authid")
    assert cannot.returncode != 0 and "permission denied" in cannot.stderr  # the premise

    env = dict(testbed.backup_env(db), S3_PREFIX=new_name("nosuper"), BACKUP_HOST_ID="db1", DB_USER=owner,
               PGPASSWORD=owner_password)
    proc = run_cli(env, "backup", "--json", check=0)
    result = _json(proc)
    assert result["globals"]["passwords"] == "omitted", result["globals"]
    assert (result["globals"]["roles"], result["globals"]["memberships"]) == (2, 1), result["globals"]
    assert re.search(r"WARNING [^\n]*passwords? [^\n]*not in this backup", proc.stderr), proc.stderr
    assert owner_password not in proc.stderr + proc.stdout
    s3 = testbed.moto.client()
    assert _metadata(s3, env["S3_BUCKET"], result["metadata_key"])["globals"]["passwords"] == "omitted"
