# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The PostgreSQL client layer on a real server (tests/testbed.py): what the client programs are given.

A spy PG_BIN_DIR records the environment and argv of every psql, pg_dump and pg_restore the engine
starts, then runs the real program. Checked here: our secrets never reach them, a database name
never reads as connection options, and the restore role's primitives (a temporary password that
only its client sees, the risks of a role) do what they say against PostgreSQL itself.
"""

import base64
import datetime
import json
import os
import secrets
import shutil
import subprocess
import time
import uuid

import pytest

from ansible_collections.quankey.backup.plugins.module_utils import config
from ansible_collections.quankey.backup.plugins.module_utils.adapters import postgres
from ansible_collections.quankey.backup.plugins.module_utils.errors import PostgresError
from ansible_collections.quankey.backup.plugins.module_utils.adapters.postgres import PgClient
from hostcommand import new_name, run_cli
from testbed import write_env_file

UTC = datetime.timezone.utc
PROGRAMS = ("psql", "pg_dump", "pg_restore")
# What the settings themselves give the client programs, besides the user's PGSSL*/PGSERVICE*/PGSYSCONFDIR.
CONNECTION_VARIABLES = {"PGPASSWORD", "PGSSLMODE", "PGCONNECT_TIMEOUT", "PGAPPNAME"}


class Spy:
    """A bin directory whose client programs write down their environment and argv, then exec the real ones."""

    def __init__(self, root, real_bindir):
        self.bindir = root / "bin"
        self.calls_dir = root / "calls"
        self.bindir.mkdir()
        self.calls_dir.mkdir()
        tools = {name: shutil.which(name) for name in ("env", "mktemp")}
        for program in PROGRAMS:
            script = self.bindir / program
            script.write_text(
                "#!/bin/sh\n"
                "record=$(%(mktemp)s %(calls)s/%(program)s.XXXXXX)\n"
                "%(env)s > \"$record.env\"\n"
                "printf '%%s\\n' \"$@\" > \"$record.argv\"\n"
                "exec %(real)s \"$@\"\n"
                % {"mktemp": tools["mktemp"], "env": tools["env"], "calls": self.calls_dir, "program": program,
                   "real": real_bindir / program})
            script.chmod(0o755)

    def clear(self):
        for path in self.calls_dir.iterdir():
            path.unlink()

    def calls(self, program=None):
        """[(program, environment dict, argv list)] of every recorded run (of ``program``)."""
        found = []
        for path in sorted(self.calls_dir.glob("*.env")):
            name = path.name.split(".")[0]
            if program and name != program:
                continue
            env = dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
            argv = path.with_suffix(".argv").read_text().splitlines()
            found.append((name, env, argv))
        return found


@pytest.fixture(scope="module")
def spy(testbed, tmp_path_factory):
    return Spy(tmp_path_factory.mktemp("pg-spy"), testbed.pg.bindir)


@pytest.fixture
def admin(testbed, spy):
    """The engine's client as the admin login (the test bed's superuser), through the spy programs."""
    return PgClient(config.settings_from_env(dict(testbed.backup_env("postgres"), PG_BIN_DIR=str(spy.bindir))))


def _env(testbed, db, spy):
    values = testbed.backup_env(db)
    values.update(S3_PREFIX=new_name("pgc"), BACKUP_HOST_ID="db1", PG_BIN_DIR=str(spy.bindir))
    return values


# --------------------------------------------------------------------------- environment of the client programs

def test_client_programs_get_no_cloud_or_backup_secrets_and_do_get_the_users_tls_settings(testbed, source, spy, tmp_path):
    env = _env(testbed, source, spy)
    signing_key = base64.b64encode(os.urandom(32)).decode("ascii")
    env.update(BACKUP_SIGNING_KEY=signing_key, AWS_SESSION_TOKEN="session-token-" + uuid.uuid4().hex,
               PGSSLROOTCERT=str(tmp_path / "root.crt"), PGSERVICEFILE=str(tmp_path / "pg_service.conf"),
               PGHOST="/nonexistent", PGOPTIONS="-c search_path=evil", PGDATABASE="nope", PGUSER="nobody",
               PGPASSFILE=str(tmp_path / "pgpass"))
    env_file = tmp_path / "backup.env"
    write_env_file(env_file, {"PGSSLCERT": "/etc/quankey/client.crt", "PGSSLROOTCERT": "/etc/quankey/root.crt"})
    secret_values = [env[name] for name in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "BACKUP_ENCRYPTION_KEY")]
    secret_values.append(signing_key)

    spy.clear()
    result = json.loads(run_cli(env, "--env-file", str(env_file), "backup", "--json", check=0).stdout)
    target = new_name("env_restored")
    run_cli(env, "--env-file", str(env_file), "restore", "--backup", result["name"], "--target-db", target, check=0)

    calls = spy.calls()
    assert {program for program, _environment, _argv in calls} == set(PROGRAMS)
    assert any("--format=custom" in argv for program, _environment, argv in calls if program == "pg_dump")
    for program, child, argv in calls:
        leaked = [name for name in child if name.startswith(("AWS_", "BACKUP_", "S3_"))]
        assert not leaked, (program, leaked)
        for value in secret_values:
            assert value not in child.values() and not any(value in arg for arg in argv), program
        libpq = {name for name in child if name.startswith("PG")}
        allowed = CONNECTION_VARIABLES | {"PGSSLROOTCERT", "PGSERVICEFILE", "PGSSLCERT"}
        if program == "psql":
            allowed |= {"PGOPTIONS"}
            assert child.get("PGOPTIONS", "-c search_path=pg_catalog") == "-c search_path=pg_catalog"
        assert libpq <= allowed, (program, libpq - allowed)
        assert child["PGSSLROOTCERT"] == "/etc/quankey/root.crt"  # the env file wins over the environment
        assert child["PGSERVICEFILE"] == str(tmp_path / "pg_service.conf")
        assert child["PGSSLCERT"] == "/etc/quankey/client.crt"
        login = argv[argv.index("-U") + 1] if "-U" in argv else None
        if login and login.startswith("quankey_restore_"):  # the restore's own login: its own one-restore password
            assert child["PGPASSWORD"] not in (testbed.pg.password, "")
        else:
            assert child["PGPASSWORD"] == testbed.pg.password
        assert child["LC_MESSAGES"] == "C" and "LC_ALL" not in child
        assert child["PATH"] == os.environ.get("PATH", "/usr/bin:/bin")


def test_the_environments_tls_settings_reach_pg_dump_without_an_env_file(testbed, source, spy, tmp_path):
    env = _env(testbed, source, spy)
    env["PGSSLROOTCERT"] = str(tmp_path / "root.crt")
    spy.clear()
    run_cli(env, "backup", check=0)
    dumps = spy.calls("pg_dump")
    assert dumps
    for _program, child, _argv in dumps:
        assert child["PGSSLROOTCERT"] == str(tmp_path / "root.crt")
        assert not [name for name in child if name.startswith(("AWS_", "BACKUP_", "S3_"))]


# --------------------------------------------------------------------------- database names

def _fill(pg, db):
    pg.query("CREATE SCHEMA app; CREATE TABLE app.marker (id int PRIMARY KEY, note text NOT NULL); "
             "INSERT INTO app.marker SELECT g, 'row ' || g FROM pg_catalog.generate_series(1, 250) g; "
             "CREATE VIEW app.first AS SELECT note FROM app.marker WHERE id < 10;", database=db)


def _digest(pg, db):
    return pg.query("SELECT pg_catalog.current_database(), pg_catalog.count(*), "
                    "pg_catalog.md5(pg_catalog.string_agg(note, ',' ORDER BY id)) FROM app.marker", database=db)[0][1:]


@pytest.mark.parametrize("stem", ["evil=db name'x", "odd \"quote\" and back\\slash=", "dbname=postgres port=1"])
def test_a_database_name_that_looks_like_connection_options_is_dumped_and_restored_as_a_name(testbed, spy, admin, stem):
    name = "%s %s" % (stem, uuid.uuid4().hex[:6])
    admin.query("CREATE DATABASE %s" % postgres.quote_ident(name))
    try:
        _fill(admin, name)
        assert admin.database_exists(name)
        assert admin.scalar("SELECT pg_catalog.current_database()", database=name) == name
        env = _env(testbed, name, spy)
        spy.clear()
        result = json.loads(run_cli(env, "backup", "--json", check=0).stdout)
        assert result["table_count"] == 1
        dumps = [argv for _program, _environment, argv in spy.calls("pg_dump") if "--format=custom" in argv]
        assert dumps and dumps[0][-1] == "dbname=%s" % postgres.conninfo_quote(name)

        target = "restored %s" % name
        restored = json.loads(run_cli(env, "restore", "--backup", result["name"], "--target-db", target, "--json",
                                      check=0).stdout)
        assert restored["target_db"] == target
        assert _digest(admin, target) == _digest(admin, name)
        assert admin.scalar("SELECT pg_catalog.count(*) FROM app.first", database=target) == "9"
        for _program, _environment, argv in spy.calls():
            for flag, value in zip(argv, argv[1:]):
                if flag == "-d":
                    assert value.startswith("dbname='"), argv
    finally:
        for db in (name, "restored %s" % name):
            admin.drop_database(db)
    assert admin.scalar("SELECT pg_catalog.count(*) FROM pg_catalog.pg_tables WHERE schemaname = 'app'") == "0"


def test_admin_queries_ignore_a_search_path_a_restored_database_set(testbed, admin):
    db = new_name("steered")
    testbed.pg.create_database(db)
    try:
        # what an archive run by the database's owner could leave: a shadow catalog first in its search_path
        testbed.pg.psql("CREATE TABLE public.pg_class (relkind \"char\", relnamespace oid, oid oid); "
                        "INSERT INTO public.pg_class SELECT 'r', 2200, g FROM generate_series(1, 50) g; "
                        "CREATE TABLE public.real_one (id int); "
                        "ALTER DATABASE %s SET search_path = public, pg_catalog" % postgres.quote_ident(db), db=db)
        assert testbed.pg.psql("SHOW search_path", db=db).strip() == "public, pg_catalog"
        assert admin.scalar("SHOW search_path", database=db) == "pg_catalog"
        assert admin.table_count(db) == 2  # public.pg_class and public.real_one, counted from the real catalog
    finally:
        testbed.pg.drop_database(db)


# --------------------------------------------------------------------------- the restore role

def _drop_roles(pg, *roles):
    for role in roles:
        pg.psql("DROP ROLE IF EXISTS %s" % postgres.quote_ident(role))


def _set_log_statement(pg, value):
    """ALTER SYSTEM log_statement, reload, and wait until new sessions see it."""
    pg.psql("ALTER SYSTEM SET log_statement = '%s'" % value if value else "ALTER SYSTEM RESET log_statement")
    pg.psql("SELECT pg_reload_conf()")
    wanted = value or "none"
    deadline = time.monotonic() + 60
    while pg.psql("SHOW log_statement").strip() != wanted:
        assert time.monotonic() < deadline, "log_statement did not become %s" % wanted
        time.sleep(0.05)


def test_a_restore_login_is_a_plain_member_of_the_restore_role_with_a_password_only_its_client_sees(testbed, spy, admin):
    role, login_role = new_name("quankey_restore"), new_name("quankey_restore_login")
    password = secrets.token_urlsafe(32)
    login = admin.as_login(login_role, password)
    assert login.user == login_role and admin.user == "postgres"
    try:
        assert not admin.role_exists(role)
        assert admin.create_restore_role(role) is True
        assert admin.create_restore_role(role) is False
        assert admin.role_exists(role) and not admin.is_superuser(role) and admin.is_superuser("postgres")
        assert admin.role_risks(role) == []
        with pytest.raises(PostgresError):
            admin.as_login(role, password).scalar("SELECT 1")  # NOLOGIN: the restore role itself never logs in

        _set_log_statement(testbed.pg, "all")
        try:
            spy.clear()
            admin.create_login_role(login_role, password, datetime.datetime.now(UTC) + datetime.timedelta(minutes=10), role)
            assert login.scalar("SELECT CURRENT_USER") == login_role
            assert login.scalar("SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = CURRENT_USER") == "f"
            assert login.scalar("SELECT pg_has_role(CURRENT_USER, '%s', 'USAGE')" % role) == "t"
            assert admin.role_risks(login_role) == []
            stored, until = testbed.pg.psql("SELECT rolpassword, rolvaliduntil > now() FROM pg_authid WHERE rolname = '%s'"
                                            % login_role).strip().split("|")
            assert stored.startswith("SCRAM-SHA-256$4096:") and until == "t"
            admin.drop_role(login_role)
            assert not admin.role_exists(login_role)
            with pytest.raises(PostgresError):
                login.scalar("SELECT 1")
        finally:
            _set_log_statement(testbed.pg, None)

        log = testbed.pg.logfile.read_text(encoding="utf-8", errors="replace")
        assert "CREATE ROLE \"%s\" LOGIN" % login_role in log and "PASSWORD 'SCRAM-SHA-256$4096:" in log  # logged
        assert password not in log
        calls = spy.calls("psql")
        assert calls
        for _program, child, argv in calls:
            assert not any(password in arg for arg in argv)
            assert not any("CREATE ROLE" in arg or "SELECT" in arg for arg in argv)  # SQL goes on stdin
            if "-U" in argv and argv[argv.index("-U") + 1] == login_role:
                assert child["PGPASSWORD"] == password
            else:
                assert child["PGPASSWORD"] == testbed.pg.password and password not in child.values()
        assert any(argv[argv.index("-U") + 1] == login_role for _program, _environment, argv in calls)
    finally:
        _drop_roles(testbed.pg, login_role, role)


def test_an_expired_restore_login_does_not_log_in(testbed, admin):
    role, login_role = new_name("quankey_restore"), new_name("quankey_restore_login")
    password = secrets.token_urlsafe(32)
    try:
        admin.create_restore_role(role)
        admin.create_login_role(login_role, password, datetime.datetime.now(UTC) - datetime.timedelta(minutes=1), role)
        with pytest.raises(PostgresError, match="rejected the password"):
            admin.as_login(login_role, password).scalar("SELECT 1")
        with pytest.raises(ValueError):
            admin.create_login_role(new_name("x"), password, datetime.datetime.now(), role)  # naive: which zone?
    finally:
        _drop_roles(testbed.pg, login_role, role)


def test_our_verifier_is_stored_as_is_and_logs_in(testbed, admin):
    role = new_name("quankey_verifier")
    password = secrets.token_urlsafe(24)
    verifier = postgres.scram_sha256_verifier(password, salt=b"0123456789abcdef", iterations=4096)
    try:
        testbed.pg.psql("CREATE ROLE %s LOGIN" % role)
        admin.query("ALTER ROLE %s PASSWORD %s" % (postgres.quote_ident(role), postgres.quote_literal(verifier)))
        assert testbed.pg.psql("SELECT rolpassword FROM pg_authid WHERE rolname = '%s'" % role).strip() == verifier
        assert admin.as_login(role, password).scalar("SELECT SESSION_USER") == role
        with pytest.raises(PostgresError, match="rejected the password"):
            admin.as_login(role, password + "x").scalar("SELECT 1")
    finally:
        _drop_roles(testbed.pg, role)


def test_role_risks_name_every_way_a_role_could_leave_the_database(testbed, admin):
    plain, middle, reader, creator, member_of_super = (new_name(stem) for stem in
                                                       ("plain", "middle", "reader", "creator", "su_member"))
    try:
        testbed.pg.psql("CREATE ROLE {plain} LOGIN; CREATE ROLE {middle} NOLOGIN; GRANT pg_read_server_files TO {middle}; "
                        "GRANT pg_execute_server_program TO {middle}; CREATE ROLE {reader} LOGIN IN ROLE {middle}; "
                        "CREATE ROLE {creator} LOGIN CREATEROLE REPLICATION BYPASSRLS; "
                        "CREATE ROLE {su} LOGIN IN ROLE postgres"
                        .format(plain=plain, middle=middle, reader=reader, creator=creator, su=member_of_super))
        assert admin.role_risks(plain) == []
        assert sorted(admin.role_risks(reader)) == ["it is a member of pg_execute_server_program",
                                                    "it is a member of pg_read_server_files"]  # through middle
        assert sorted(admin.role_risks(creator)) == ["it has BYPASSRLS", "it has CREATEROLE", "it has REPLICATION"]
        assert admin.role_risks(member_of_super) == ["it is a member of superuser role postgres"]
        assert "it is a superuser" in admin.role_risks("postgres")
        with pytest.raises(PostgresError, match="does not exist"):
            admin.role_risks(new_name("ghost"))
        assert not admin.is_superuser(new_name("ghost"))
    finally:
        _drop_roles(testbed.pg, member_of_super, creator, reader, middle, plain)


def test_a_database_made_for_a_restore_login_is_handed_back_with_reassign_owned(testbed, admin):
    role, login_role = new_name("quankey_restore"), new_name("quankey_restore_login")
    password = secrets.token_urlsafe(32)
    db = new_name("owned")
    try:
        admin.create_restore_role(role)
        admin.create_login_role(login_role, password, datetime.datetime.now(UTC) + datetime.timedelta(minutes=5), role)
        assert admin.create_database(db, {"encoding": "UTF8", "lc_collate": "C", "lc_ctype": "C"},
                                     owner=login_role) == "exact"
        owner_sql = "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '%s'" % db
        assert testbed.pg.psql(owner_sql).strip() == login_role
        admin.as_login(login_role, password).query("CREATE TABLE public.made_by_restore (id int); "
                                                   "GRANT SELECT ON public.made_by_restore TO %s" % login_role, database=db)
        admin.reassign_owned(db, login_role, "postgres")
        admin.drop_role(login_role, db)
        assert not admin.role_exists(login_role)
        assert testbed.pg.psql("SELECT tableowner FROM pg_tables WHERE tablename = 'made_by_restore'", db=db).strip() \
            == "postgres"
        assert testbed.pg.psql(owner_sql).strip() == "postgres"
    finally:
        testbed.pg.drop_database(db)
        _drop_roles(testbed.pg, login_role, role)


# --------------------------------------------------------------------------- owners in a real archive

def test_toc_owners_reads_a_real_pg_restore_listing(testbed, admin):
    role = new_name("owner")
    db = new_name("toc")
    try:
        testbed.pg.psql("CREATE ROLE %s NOLOGIN" % role)
        testbed.pg.create_database(db)
        testbed.pg.psql("CREATE SCHEMA s AUTHORIZATION {role}; CREATE TABLE s.t (id int PRIMARY KEY); "
                        "ALTER TABLE s.t OWNER TO {role}; CREATE TABLE public.p (id int); INSERT INTO public.p VALUES (1); "
                        "CREATE FUNCTION public.f() RETURNS int LANGUAGE sql AS 'SELECT 1'; "
                        "CREATE EXTENSION IF NOT EXISTS plpgsql; CREATE TYPE public.mood AS ENUM ('ok'); "
                        "ALTER TYPE public.mood OWNER TO {role}".format(role=role), db=db)
        dump = subprocess.run(admin.dump_argv(db), env=admin.environment(), stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=True).stdout
        listing = subprocess.run(admin.list_argv(), env=admin.environment(), input=dump, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, check=True).stdout.decode("utf-8")
        owners = postgres.toc_owners(listing)
        # the role: SCHEMA s, TABLE s.t, its TABLE DATA, its CONSTRAINT, TYPE mood; postgres: TABLE p, its DATA, FUNCTION f
        assert owners == {role: 5, "postgres": 3}, listing
        assert postgres.count_toc_tables(listing) == 2
    finally:
        testbed.pg.drop_database(db)
        _drop_roles(testbed.pg, role)
