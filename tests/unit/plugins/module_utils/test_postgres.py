# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pure helpers of the PostgreSQL layer: quoting, versions, error messages, TOC counting."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import hashlib
import hmac
import re

import pytest

from ansible_collections.quankey.backup.plugins.module_utils import config
from ansible_collections.quankey.backup.plugins.module_utils.adapters import postgres
from ansible_collections.quankey.backup.plugins.module_utils.errors import PostgresError

TOC = """;
; Archive created at 2026-11-26 06:23:04 UTC
;     dbname: d1
;
215; 1259 16385 TABLE public a postgres
216; 1259 16390 TABLE public b postgres
217; 1259 16394 VIEW public v postgres
218; 1259 16398 TABLE s c postgres
219; 1259 16400 TABLE DATA y postgres
3352; 0 16385 TABLE DATA public a postgres
3353; 0 16390 TABLE DATA public b postgres
"""


def test_toc_counts_tables_not_table_data_or_views():
    # 219 is a table in a schema named DATA: still a table
    assert postgres.count_toc_tables(TOC) == 4


def test_identifiers_and_literals_are_quoted():
    assert postgres.quote_ident('we"ird') == '"we""ird"'
    assert postgres.quote_literal("it's") == "'it''s'"


@pytest.mark.parametrize("text,expected", [
    ("pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)", (15, 18)),
    ("pg_restore (PostgreSQL) 17.2", (17, 2)),
    ("pg_dump (PostgreSQL) 18devel", (18, 0)),
])
def test_client_versions_are_read(text, expected):
    assert postgres.parse_client_version(text) == expected


def test_unreadable_version_is_an_error():
    with pytest.raises(PostgresError):
        postgres.parse_client_version("something else")


@pytest.mark.parametrize("stderr,match", [
    ('psql: error: connection to server at "127.0.0.1", port 5432 failed: FATAL:  password authentication failed for user "q"',
     "rejected the password for user 'q'.*PGPASSWORD"),
    ('psql: error: connection to server at "127.0.0.1", port 5 failed: Connection refused\n\tIs the server running',
     r"connection refused\): is the server running\? check with `pg_isready -h 127.0.0.1 -p 5432`"),
    ('psql: error: connection to server failed: FATAL:  database "nope" does not exist', "database 'nope' does not exist.*DB_NAME"),
    ('FATAL:  role "ghost" does not exist', "role 'ghost' does not exist"),
    ("ERROR:  permission denied to create database", "may not create databases"),
    ("psql: error: something odd", "PostgreSQL error on 127.0.0.1:5432 .*something odd"),
])
def test_client_errors_become_one_helpful_line(stderr, match):
    message = postgres.explain_client_error(stderr, "127.0.0.1:5432", "q", "d")
    assert re.search(match, message), message
    assert "\n" not in message


def test_client_errors_name_a_module_option_when_the_value_came_from_one():
    message = postgres.explain_client_error("FATAL:  password authentication failed for user \"q\"", "h:5432", "q", "d",
                                            label=lambda field: {"db_password": "the login_password option"}[field])
    assert message.endswith("check the login_password option")


# --------------------------------------------------------------------------- the client programs' environment

ENVIRON = {
    "PATH": "/usr/bin:/bin", "HOME": "/root", "LANG": "en_US.UTF-8", "LANGUAGE": "de", "TZ": "UTC", "TMPDIR": "/tmp",
    "LC_CTYPE": "en_US.UTF-8", "LC_NUMERIC": "de_DE.UTF-8",
    "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "aws-secret", "AWS_SESSION_TOKEN": "aws-token",
    "BACKUP_ENCRYPTION_KEY": "backup-key", "BACKUP_SIGNING_KEY": "signing-key", "BACKUP_DECRYPTION_KEYS": "old-keys",
    "S3_BUCKET": "bucket", "PGHOST": "/evil", "PGOPTIONS": "-c search_path=evil", "PGDATABASE": "other",
    "PGUSER": "someone", "PGPASSFILE": "/tmp/pgpass", "PGPASSWORD": "environ-password",
    "PGSSLROOTCERT": "/etc/ssl/environ-root.crt", "PGSERVICEFILE": "/etc/pg_service.conf", "PGSERVICE": "main",
    "PGSYSCONFDIR": "/etc/postgresql-common", "PGSSLMODE": "require",
    "SSH_AUTH_SOCK": "/tmp/agent", "PYTHONPATH": "/x", "LD_PRELOAD": "/evil.so",
}


def _settings(**kwargs):
    values = dict(db_name="quankey_prod", db_password="admin-password")
    values.update(kwargs)
    return config.Settings(**values)


def test_the_child_environment_holds_only_allowed_variables():
    env = postgres.child_environment(_settings(), ENVIRON)
    assert env == {
        "PATH": "/usr/bin:/bin", "HOME": "/root", "LANG": "en_US.UTF-8", "LANGUAGE": "de", "TZ": "UTC", "TMPDIR": "/tmp",
        "LC_CTYPE": "en_US.UTF-8", "LC_NUMERIC": "de_DE.UTF-8", "LC_MESSAGES": "C",
        "PGSSLROOTCERT": "/etc/ssl/environ-root.crt", "PGSERVICEFILE": "/etc/pg_service.conf", "PGSERVICE": "main",
        "PGSYSCONFDIR": "/etc/postgresql-common", "PGSSLMODE": "require",
        "PGPASSWORD": "admin-password", "PGCONNECT_TIMEOUT": "10", "PGAPPNAME": "quankey-backup",
    }


def test_cloud_and_backup_secrets_and_stray_libpq_settings_never_reach_the_client_programs():
    env = postgres.child_environment(_settings(), ENVIRON)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "BACKUP_ENCRYPTION_KEY",
                 "BACKUP_SIGNING_KEY", "BACKUP_DECRYPTION_KEYS", "S3_BUCKET", "PGHOST", "PGOPTIONS", "PGDATABASE",
                 "PGUSER", "PGPASSFILE", "SSH_AUTH_SOCK", "PYTHONPATH", "LD_PRELOAD"):
        assert name not in env, name
    for secret in ("aws-secret", "aws-token", "backup-key", "signing-key", "old-keys", "environ-password"):
        assert secret not in env.values()


def test_the_env_files_libpq_variables_win_over_the_environments():
    settings = _settings(pg_passthrough={"PGSSLROOTCERT": "/etc/quankey/root.crt", "PGSSLCERT": "/etc/quankey/client.crt"})
    env = postgres.child_environment(settings, ENVIRON)
    assert env["PGSSLROOTCERT"] == "/etc/quankey/root.crt"
    assert env["PGSSLCERT"] == "/etc/quankey/client.crt"
    assert env["PGSERVICEFILE"] == "/etc/pg_service.conf"  # only in the environment: kept


def test_the_settings_connection_variables_win_over_everything():
    settings = _settings(db_sslmode="verify-full", pg_passthrough={"PGSSLMODE": "disable"})
    env = postgres.child_environment(settings, ENVIRON)
    assert env["PGSSLMODE"] == "verify-full"
    assert env["PGPASSWORD"] == "admin-password"


def test_without_a_password_in_the_settings_none_is_passed_on():
    env = postgres.child_environment(_settings(db_password=None), ENVIRON)
    assert "PGPASSWORD" not in env


def test_another_logins_password_replaces_the_admins():
    env = postgres.child_environment(_settings(), ENVIRON, password="restore-password")
    assert env["PGPASSWORD"] == "restore-password"
    assert "admin-password" not in env.values()
    assert "PGPASSWORD" not in postgres.child_environment(_settings(), ENVIRON, password=None)


def test_messages_stay_english_even_under_lc_all():
    env = postgres.child_environment(_settings(), {"LC_ALL": "de_DE.UTF-8", "LC_CTYPE": "fr_FR.UTF-8", "LANG": "fr_FR"})
    assert "LC_ALL" not in env and "LC_CTYPE" not in env  # LC_ALL overrode LC_CTYPE: its value alone stands
    assert env["LANG"] == "de_DE.UTF-8"
    assert env["LC_MESSAGES"] == "C"


def _bin_dir(tmp_path):
    for name in ("pg_dump", "psql", "pg_restore"):
        (tmp_path / name).write_text("#!/bin/sh\n")
    return str(tmp_path)


def test_a_client_for_another_login_uses_its_user_and_password(tmp_path, monkeypatch):
    monkeypatch.setattr(postgres.os, "environ", dict(ENVIRON))
    admin = postgres.PgClient(_settings(pg_bin_dir=_bin_dir(tmp_path), db_user="admin"))
    login = admin.as_login("quankey_restore", "restore-password")
    assert admin.user == "admin" and login.user == "quankey_restore"
    assert admin.environment()["PGPASSWORD"] == "admin-password"
    assert login.environment()["PGPASSWORD"] == "restore-password"
    assert login.restore_argv("d")[-4:] == ["-U", "quankey_restore", "-d", "dbname='d'"]
    assert login.bin_dir == admin.bin_dir and login.where == admin.where
    assert "PGPASSWORD" not in admin.as_login("certificate_user", None).environment()


# --------------------------------------------------------------------------- database names and SQL

@pytest.mark.parametrize("value,expected", [
    ("quankey_prod", "'quankey_prod'"),
    ("evil=db name'x", "'evil=db name\\'x'"),
    ("back\\slash", "'back\\\\slash'"),
    ("dbname=postgres host=/tmp port=1", "'dbname=postgres host=/tmp port=1'"),
    ("", "''"),
    ("ünïcödé 数据库", "'ünïcödé 数据库'"),
    ("\\'", "'\\\\\\''"),
])
def test_connection_string_values_are_quoted_for_libpq(value, expected):
    assert postgres.conninfo_quote(value) == expected


def _parse_conninfo_value(text):
    """libpq's reading of one single-quoted conninfo value (conninfo_parse): backslash escapes the next character."""
    assert text[0] == "'"
    out, index = [], 1
    while text[index] != "'":
        if text[index] == "\\":
            index += 1
        out.append(text[index])
        index += 1
    assert index == len(text) - 1, "the value must end at its closing quote"
    return "".join(out)


@pytest.mark.parametrize("name", ["a", "evil=db name'x", "x\\' host=evil", "'", "\\", "trailing\\", "a b=c 'd' \\e"])
def test_a_quoted_name_reads_back_as_itself_and_nothing_more(name):
    assert _parse_conninfo_value(postgres.conninfo_quote(name)) == name


def test_every_client_program_gets_the_database_as_a_dbname_value(tmp_path):
    pg = postgres.PgClient(_settings(pg_bin_dir=_bin_dir(tmp_path), db_user="admin", db_host="db.example", db_port=5433))
    expected = ["-h", "db.example", "-p", "5433", "-U", "admin", "-d", "dbname='evil=db name\\'x'"]
    assert pg.connection_args("evil=db name'x") == expected
    assert pg.dump_argv("evil=db name'x")[-8:] == expected
    assert pg.restore_argv("evil=db name'x", no_owner=True)[-8:] == expected
    assert "--no-owner" in pg.restore_argv("d", no_owner=True) and "--no-owner" not in pg.restore_argv("d")


def test_literals_with_backslashes_use_the_escape_form():
    assert postgres.quote_literal("a\\b'c") == "E'a\\\\b''c'"
    assert postgres.quote_literal("plain") == "'plain'"


def test_queries_go_to_psql_on_stdin_with_a_pinned_search_path(tmp_path, monkeypatch):
    seen = {}

    class Psql:
        returncode = 0

        def __init__(self, argv, **kwargs):
            seen["argv"], seen["kwargs"] = argv, kwargs

        def communicate(self, data=None, timeout=None):
            seen["input"] = data
            return b"1\x1fa\n\n2\x1fb\n", b""

    monkeypatch.setattr(postgres.os, "environ", dict(ENVIRON))
    monkeypatch.setattr(postgres.subprocess, "Popen", Psql)
    pg = postgres.PgClient(_settings(pg_bin_dir=_bin_dir(tmp_path)))
    sql = "SELECT 1, 'secret-looking literal'"
    assert pg.query(sql, database="odd=name") == [["1", "a"], ["2", "b"]]
    assert not any("secret-looking" in arg for arg in seen["argv"])
    assert seen["argv"][-2:] == ["-f", "-"] and "-c" not in seen["argv"]
    assert seen["input"] == sql.encode("utf-8")
    assert seen["kwargs"]["env"]["PGOPTIONS"] == "-c search_path=pg_catalog"
    assert "dbname='odd=name'" in seen["argv"]


def test_an_interrupted_query_lets_psql_end_its_statement_then_goes_on(tmp_path, monkeypatch):
    """Ctrl-C or SIGTERM during a query: psql gets the time to end its statement (a CREATE DATABASE the server runs
    would commit anyway), and the interruption goes on; psql is killed only when it takes too long."""
    calls = []

    class Psql:
        returncode = None

        def __init__(self, argv, **kwargs):
            self.slow = slow

        def communicate(self, data=None, timeout=None):
            calls.append(("communicate", timeout))
            if len(calls) == 1:
                raise KeyboardInterrupt("terminated by signal 15")
            if self.slow:
                raise postgres.subprocess.TimeoutExpired("psql", timeout)
            self.returncode = 0
            return b"", b""

        def kill(self):
            calls.append(("kill", None))

        def wait(self, timeout=None):
            calls.append(("wait", None))

    monkeypatch.setattr(postgres.os, "environ", dict(ENVIRON))
    monkeypatch.setattr(postgres.subprocess, "Popen", Psql)
    pg = postgres.PgClient(_settings(pg_bin_dir=_bin_dir(tmp_path)))
    slow = False
    with pytest.raises(KeyboardInterrupt):
        pg.query("CREATE DATABASE x")
    assert calls == [("communicate", None), ("communicate", postgres.STATEMENT_FINISH_SECONDS)]
    del calls[:]
    slow = True
    with pytest.raises(KeyboardInterrupt):
        pg.query("CREATE DATABASE x")
    assert calls == [("communicate", None), ("communicate", postgres.STATEMENT_FINISH_SECONDS), ("kill", None),
                     ("wait", None)]


def test_psql_errors_from_stdin_read_as_before():
    message = postgres.explain_client_error('psql:<stdin>:1: ERROR:  syntax error at or near "x"', "h:5432", "q", "d")
    assert message == 'PostgreSQL error on h:5432 (database \'d\'): syntax error at or near "x"'


# --------------------------------------------------------------------------- SCRAM verifiers

def _independent_verifier(password, salt, iterations):
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    return "SCRAM-SHA-256$%d:%s$%s:%s" % (iterations, base64.b64encode(salt).decode(),
                                          base64.b64encode(hashlib.sha256(client_key).digest()).decode(),
                                          base64.b64encode(server_key).decode())


def test_scram_verifier_matches_the_rfc_7677_example():
    # RFC 7677 section 3: password "pencil", salt W22ZaJ0SNY7soEsUEjb6gQ==, 4096 iterations. The keys below
    # reproduce that exchange's client proof and server signature (checked in the next test).
    salt = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
    assert postgres.scram_sha256_verifier("pencil", salt) == (
        "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY="
        ":wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=")


def test_scram_verifier_keys_complete_the_rfc_7677_exchange():
    verifier = postgres.scram_sha256_verifier("pencil", base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ=="))
    stored_key, server_key = (base64.b64decode(part) for part in verifier.split("$")[2].split(":"))
    nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
    auth = ("n=user,r=rOprNGfwEbeRWgbNEkqO,r=%s,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,c=biws,r=%s" % (nonce, nonce)).encode()
    server_signature = hmac.new(server_key, auth, hashlib.sha256).digest()
    assert base64.b64encode(server_signature).decode() == "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
    proof = base64.b64decode("dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
    client_key = bytes(a ^ b for a, b in zip(proof, hmac.new(stored_key, auth, hashlib.sha256).digest()))
    assert hashlib.sha256(client_key).digest() == stored_key


def test_scram_verifier_agrees_with_the_primitives_for_any_salt_and_count():
    salt = bytes(range(16))
    assert postgres.scram_sha256_verifier("Zm9vYmFyYmF6", salt, 10000) == _independent_verifier("Zm9vYmFyYmF6", salt, 10000)


def test_scram_verifiers_have_postgresqls_stored_format_and_a_fresh_salt():
    first = postgres.scram_sha256_verifier("token")
    second = postgres.scram_sha256_verifier("token")
    pattern = r"^SCRAM-SHA-256\$4096:[A-Za-z0-9+/]{22}==\$[A-Za-z0-9+/]{43}=:[A-Za-z0-9+/]{43}=$"
    assert re.match(pattern, first) and re.match(pattern, second)
    assert len(base64.b64decode(first.split("$")[1].split(":")[1])) == 16
    assert first != second
    assert "token" not in first


@pytest.mark.parametrize("password", ["", "pässword", None])
def test_scram_verifier_refuses_what_it_cannot_hash_like_postgresql(password):
    with pytest.raises(ValueError):
        postgres.scram_sha256_verifier(password)


# --------------------------------------------------------------------------- owners in a table of contents

# From a real `pg_restore --list` (PostgreSQL 15): owner-less entries end with a space.
OWNER_TOC = "\n".join([
    ";",
    "; Archive created at 2026-12-01 00:04:51 UTC",
    ";     dbname: probe",
    ";",
    "; Selected TOC Entries:",
    ";",
    "3399; 0 0 COMMENT - SCHEMA public pg_database_owner",
    "7; 2615 16424 SCHEMA - s alice",
    "2; 3079 16387 EXTENSION - pgcrypto ",
    "3400; 0 0 COMMENT - EXTENSION pgcrypto ",
    "255; 1255 16434 FUNCTION public f() postgres",
    "218; 1259 16435 SEQUENCE s seq alice",
    "217; 1259 16428 TABLE s we ird tab alice",
    "3390; 2613 4242 BLOB - 4242 postgres",
    "3388; 0 16428 TABLE DATA s we ird tab alice",
    "3391; 0 0 BLOBS - BLOBS ",
    "3242; 2606 16432 CONSTRAINT s we ird tab we ird tab_pkey alice",
    "3386; 6106 16437 PUBLICATION TABLE public pub t postgres",
    "2078; 826 16433 DEFAULT ACL - DEFAULT PRIVILEGES FOR TABLES alice",
    ";3387; 0 16425 TABLE DATA public t mallory",
    "",
])


def test_toc_owners_counts_entries_per_owner_and_skips_owner_less_and_commented_ones():
    assert postgres.toc_owners(OWNER_TOC) == {"pg_database_owner": 1, "alice": 6, "postgres": 3}


def test_toc_owners_of_an_empty_listing_is_empty():
    assert postgres.toc_owners("") == {}
    assert postgres.toc_owners(";\n; Selected TOC Entries:\n;\n") == {}


def test_toc_owners_reads_an_owner_with_a_space_as_its_last_word():
    assert postgres.toc_owners("216; 1259 16425 TABLE public t odd role\n") == {"role": 1}


def test_names_cannot_make_up_toc_lines():
    # pg_restore turns CR/LF in names into spaces; other line breaks of str.splitlines() pass through as they are
    forged = "216; 1259 16425 TABLE public x\u2028217; 1259 1 TABLE public fake mallory alice\n"
    assert postgres.toc_owners(forged) == {"alice": 1}
    assert postgres.count_toc_tables(forged) == 1
    assert postgres.count_toc_tables(TOC.replace("\n", "\r\n")) == 4


def test_a_psql_error_is_reported_without_the_statement_lines_psql_echoes():
    stderr = ("psql:<stdin>:1: ERROR:  syntax error at or near \"PASSWORD\"\n"
              "LINE 1: ALTER ROLE \"r\" LOGIN PASSWORD 'SCRAM-SHA-256$4096:abc' VALID\n"
              "                              ^\n")
    message = postgres.explain_client_error(stderr, "h:5432", "q", "d")
    assert message == 'PostgreSQL error on h:5432 (database \'d\'): syntax error at or near "PASSWORD"'


# What pg_dump and pg_restore 15 print when they fail: the cause first, context after it.
PG_DUMP_LOST_SERVER = """pg_dump: error: Dumping the contents of table "customers" failed: PQgetResult() failed.
pg_dump: detail: Error message from server: server closed the connection unexpectedly
\tThis probably means the server terminated abnormally
\tbefore or while processing the request.
pg_dump: detail: Command was: COPY public.customers (id, email) TO stdout;
"""
PG_RESTORE_MISSING_ROLE = """pg_restore: error: could not execute query: ERROR:  role "appowner" does not exist
Command was: ALTER TABLE public.customers OWNER TO appowner;
"""
PG_RESTORE_PROGRAM = """pg_restore: error: could not execute query: ERROR:  permission denied to COPY to or from an external program
DETAIL:  Only roles with privileges of the "pg_execute_server_program" role may COPY to or from an external program.
HINT:  Anyone can COPY to stdout or from stdin. psql's \\copy command also works for anyone.
CONTEXT:  SQL statement "COPY (SELECT 1) TO PROGRAM 'touch /tmp/x'"
PL/pgSQL function evil(integer) line 3 at EXECUTE
Command was: CREATE INDEX t_evil ON public.t USING btree (public.evil(a));
"""


@pytest.mark.parametrize("stderr, cause, statement", [
    (PG_DUMP_LOST_SERVER, "server closed the connection unexpectedly", "COPY public.customers (id, email) TO stdout;"),
    (PG_RESTORE_MISSING_ROLE, 'role "appowner" does not exist', "ALTER TABLE public.customers OWNER TO appowner;"),
    (PG_RESTORE_PROGRAM, "permission denied to COPY to or from an external program", "CREATE INDEX t_evil ON"),
])
def test_a_failure_is_told_by_its_cause_not_by_the_last_line(stderr, cause, statement):
    detail = postgres.failure_detail(stderr)
    assert detail.startswith(cause) and "(while running: %s" % statement in detail
    assert "\n" not in detail and "ERROR:" not in detail and "pg_restore:" not in detail


def test_a_long_statement_is_shortened_in_the_failure():
    detail = postgres.failure_detail("pg_restore: error: boom\nCommand was: " + "x" * 500)
    assert detail.startswith("boom (while running: xxx") and detail.endswith("...)") and len(detail) < 140
