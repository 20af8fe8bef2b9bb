# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""PostgreSQL through its own client programs (psql, pg_dump, pg_restore).

Programs run as argument lists; the password travels in ``PGPASSWORD`` in the
child's environment, never in argv, and SQL goes to psql on stdin. The child's
environment is built from an allow-list (:func:`child_environment`): our cloud
and backup secrets never reach the client programs. A database name reaches
them only as ``dbname='...'`` (:func:`conninfo_quote`), so libpq never reads
it as connection options. Client failures become one-line
:class:`PostgresError` messages that say what to check.

TLS is libpq's: the settings' sslmode and files travel as ``PGSSLMODE``,
``PGSSLROOTCERT``, ``PGSSLCERT`` and ``PGSSLKEY``; :func:`check_tls_files` refuses
files libpq would not use before a program runs, and :func:`explain_tls_error`
names the setting to change when libpq's TLS fails.

Restores of untrusted archives run as a non-superuser *restore role* that logs in
with a short-lived random password: :func:`scram_sha256_verifier` turns it into the
verifier PostgreSQL stores, so only the verifier travels in SQL (and may reach a
server log); the plaintext travels only in ``PGPASSWORD`` of that role's client.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import datetime
import glob
import hashlib
import hmac
import json
import os
import re
import shutil
import stat
import subprocess
import time

from ..config import FIELD_VARIABLES, is_pg_passthrough
from ..errors import ConfigError, PostgresError

PG_LIB_GLOB = "/usr/lib/postgresql/*/bin"
_VERSION_RE = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")
_TOC_TABLE_RE = re.compile(r"^\d+; 1259 \d+ TABLE ")  # 1259: pg_class; TABLE DATA entries have 0
_TOC_ENTRY_RE = re.compile(r"^\d+; \d+ \d+ ")  # "<dump id>; <catalog oid> <object oid> <desc> <schema> <tag> <owner>"
# Tables a restore should bring back: ordinary and partitioned, outside the system
# schemas, not owned by an extension (extensions recreate theirs). Schema-qualified:
# it runs in restored databases, whose objects an archive chose.
TABLE_COUNT_SQL = (
    "SELECT pg_catalog.count(*) FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
    "WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
    "AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%' "
    "AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass "
    "AND d.objid = c.oid AND d.deptype = 'e')"
)
# psql's startup options for our own queries: a client startup option beats ALTER DATABASE/ROLE ... SET, so
# objects and settings a restored archive left in a database cannot steer what our catalog queries resolve to.
QUERY_PGOPTIONS = "-c search_path=pg_catalog"

# What the client programs get from our environment (besides the user's libpq TLS/service variables).
CHILD_ENVIRONMENT_NAMES = ("PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TMPDIR")
# Predefined roles whose members can reach the server's files or programs, or every table.
DANGEROUS_ROLES = ("pg_execute_server_program", "pg_read_server_files", "pg_write_server_files",
                   "pg_read_all_data", "pg_write_all_data")
# The TLS files: the setting, the libpq variable it becomes (config.PG_SETTING_VARIABLES), what it is, for messages.
TLS_FILES = (("db_ca_cert", "PGSSLROOTCERT", "CA certificate"), ("db_ssl_cert", "PGSSLCERT", "client certificate"),
             ("db_ssl_key", "PGSSLKEY", "client certificate's private key"))
SCRAM_ITERATIONS = 4096  # PostgreSQL's default scram_iterations
SCRAM_SALT_BYTES = 16


class _SettingsPassword:
    """Default of child_environment's ``password``: the settings' own password (the admin login's)."""

    def __repr__(self):
        return "SETTINGS_PASSWORD"


SETTINGS_PASSWORD = _SettingsPassword()


def quote_ident(name):
    """A SQL identifier, double-quoted."""
    return '"%s"' % name.replace('"', '""')


def quote_literal(value):
    """A SQL string literal; with a backslash, the E'' form (as PostgreSQL's quote_literal does).

    The E'' form means the same whatever ``standard_conforming_strings`` says, which a database's
    settings (ALTER DATABASE ... SET) may have changed.
    """
    quoted = value.replace("'", "''")
    if "\\" in quoted:
        return "E'%s'" % quoted.replace("\\", "\\\\")
    return "'%s'" % quoted


def conninfo_quote(value):
    """A libpq connection-string value: single-quoted, ``\\`` and ``'`` escaped by a backslash.

    ``"dbname=%s" % conninfo_quote(name)`` is a conninfo whose only keyword is dbname, whatever
    ``name`` holds ('=', spaces, quotes, backslashes, any UTF-8).
    """
    return "'%s'" % value.replace("\\", "\\\\").replace("'", "\\'")


def child_environment(settings, environ=None, password=SETTINGS_PASSWORD):
    """The environment of a client program: an allow-list, never our cloud or backup secrets.

    From ``environ`` (default ``os.environ``): PATH, HOME, LANG, LANGUAGE, TZ, TMPDIR, every LC_*, and the
    user's libpq TLS/service variables (PGSSL*, PGSERVICE*, PGSYSCONFDIR: config.is_pg_passthrough); then the
    same kinds of variables from the settings (the env file's, which win); then the connection's own
    (settings.pg_environment(): PGPASSWORD, PGSSLMODE, PGCONNECT_TIMEOUT, PGAPPNAME, which win over all);
    then LC_MESSAGES=C, so client errors are the English ones explain_client_error reads. An LC_ALL would
    beat LC_MESSAGES: its value is passed as LANG instead (with no other LC_*, which LC_ALL overrode).

    ``password``: for a client that logs in as another user, that user's password (None: no PGPASSWORD);
    by default the settings' password (the admin login's).
    """
    environ = os.environ if environ is None else environ
    env = {}
    for name, value in environ.items():
        if name in CHILD_ENVIRONMENT_NAMES or name.startswith("LC_"):
            env[name] = value
        elif is_pg_passthrough(name) and value != "":
            env[name] = value
    if "LC_ALL" in env:
        env["LANG"] = env.pop("LC_ALL")
        for name in [name for name in env if name.startswith("LC_")]:
            del env[name]
    env.update((name, value) for name, value in settings.pg_user_environment().items()
               if is_pg_passthrough(name) and value not in (None, ""))
    env.update(settings.pg_environment())
    if password is not SETTINGS_PASSWORD:
        env.pop("PGPASSWORD", None)
        if password:
            env["PGPASSWORD"] = password
    env["LC_MESSAGES"] = "C"
    return env


def scram_sha256_verifier(password, salt=None, iterations=SCRAM_ITERATIONS):
    """The SCRAM-SHA-256 verifier PostgreSQL stores for ``password`` (RFC 5802, RFC 7677).

    ``SCRAM-SHA-256$<iterations>:<base64 salt>$<base64 StoredKey>:<base64 ServerKey>``, a 16-byte random salt
    by default. ``ALTER ROLE ... PASSWORD '<verifier>'`` stores it as is, so the plaintext never reaches the
    server. PostgreSQL applies SASLprep to passwords; for ASCII it changes nothing, and our passwords are
    random ASCII tokens: anything else is refused (ValueError) rather than risk a verifier that never matches.
    """
    if not isinstance(password, str) or not password:
        raise ValueError("the password must be a non-empty string")
    try:
        secret = password.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError("the password must be ASCII (no SASLprep is done here)")
    if salt is None:
        salt = os.urandom(SCRAM_SALT_BYTES)
    if not salt or int(iterations) < 1:
        raise ValueError("the salt must be non-empty and the iteration count positive")
    iterations = int(iterations)
    salted = hashlib.pbkdf2_hmac("sha256", secret, salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(data):
        return base64.b64encode(data).decode("ascii")

    return "SCRAM-SHA-256$%d:%s$%s:%s" % (iterations, b64(salt), b64(stored_key), b64(server_key))


def _toc_lines(listing):
    """The lines of a ``pg_restore --list`` listing: split at newlines only.

    pg_restore turns CR and LF in names into spaces, but other characters str.splitlines() breaks at
    (U+001C, U+0085, U+2028, ...) may be in an archive's names: an archive must not make up TOC lines.
    """
    return [line[:-1] if line.endswith("\r") else line for line in listing.split("\n")]


def count_toc_tables(listing):
    """How many TABLE entries a ``pg_restore -l`` listing holds."""
    return sum(1 for line in _toc_lines(listing) if _TOC_TABLE_RE.match(line))


def toc_owners(listing):
    """{owner role name: number of TOC entries} of a ``pg_restore --list`` listing.

    An entry line is ``<id>; <catalog oid> <oid> <desc> <schema> <tag> <owner>``; the owner is the last
    space-separated field. Entries with no owner (EXTENSION, COMMENT ON EXTENSION, BLOBS, ...) end with an
    empty owner (a trailing space) and are not counted; ';' comment lines are skipped. The names come from
    the archive, i.e. from whoever made it: an owner whose name holds a space is reported by its last word
    (descs, schemas and tags hold spaces too, so the text cannot say more).
    """
    owners = {}
    for line in _toc_lines(listing):
        if not _TOC_ENTRY_RE.match(line):
            continue
        owner = line.rsplit(" ", 1)[-1]
        if owner:
            owners[owner] = owners.get(owner, 0) + 1
    return owners


def parse_client_version(text):
    """(major, minor) from ``pg_dump --version`` style output."""
    match = _VERSION_RE.search(text)
    if not match:
        raise PostgresError("cannot read the version from %r" % text.strip())
    return int(match.group(1)), int(match.group(2) or 0)


def _version_of_dir(path):
    match = re.search(r"/postgresql/(\d+)/bin$", path)
    return int(match.group(1)) if match else 0


def find_bin_dir(preferred=None):
    """Where the client programs live: ``preferred`` (PG_BIN_DIR), else the newest Debian-style dir, else PATH."""
    if preferred:
        if not os.path.isfile(os.path.join(preferred, "pg_dump")):
            raise ConfigError("PG_BIN_DIR %s has no pg_dump: point it at the PostgreSQL client's bin directory" % preferred)
        return preferred
    candidates = sorted((d for d in glob.glob(PG_LIB_GLOB) if os.path.isfile(os.path.join(d, "pg_dump"))),
                        key=_version_of_dir, reverse=True)
    if candidates:
        return candidates[0]
    found = shutil.which("pg_dump")
    if found:
        return os.path.dirname(found)
    raise ConfigError("pg_dump not found: install the PostgreSQL client (apt-get install postgresql-client) "
                      "or set PG_BIN_DIR")


def own_application_name():
    """The application_name of this process's psql runs: ``quankey-backup/<pid>``."""
    return "quankey-backup/%d" % os.getpid()


STATEMENT_FINISH_SECONDS = 60  # how long an interrupted psql may take to end its statement (then it is killed)


def _finish_statement(proc, seconds=STATEMENT_FINISH_SECONDS):
    """After an interruption (SIGTERM, Ctrl-C) during ``proc`` (psql): let it end its statement before the interruption
    goes on, so the caller's clean-up finds what it did. Killing psql would not stop a CREATE DATABASE the server is
    running: it would commit after the clean-up had looked for it, and the database would be left behind."""
    try:
        proc.communicate(timeout=seconds)
    except BaseException:
        proc.kill()
        proc.wait()


def explain_client_error(stderr, where, user, database, label=None):
    """One line for a libpq/psql failure, naming the likely fix (``label(field)`` names where a setting is set)."""
    label = label or (lambda field: FIELD_VARIABLES[field])
    text = (stderr or "").strip()
    lowered = text.lower()
    tls = explain_tls_error(text, where, user, label)
    if tls:
        return tls
    if "password authentication failed" in lowered:
        return "PostgreSQL rejected the password for user %r at %s: check %s" % (user, where, label("db_password"))
    if "no password supplied" in lowered or "fe_sendauth" in lowered:
        return "PostgreSQL at %s wants a password for user %r and none was given: set %s" % (where, user, label("db_password"))
    if "connection refused" in lowered or "could not connect" in lowered or "no such file or directory" in lowered:
        return ("PostgreSQL connection failed at %s (connection refused): is the server running? "
                "check with `pg_isready -h %s`" % (where, where.replace(":", " -p ")))
    if "timeout expired" in lowered or "timed out" in lowered:
        return "PostgreSQL connection to %s timed out: check %s, %s and firewalls" % (where, label("db_host"), label("db_port"))
    if "could not translate host name" in lowered:
        return "PostgreSQL host in %s does not resolve: check %s" % (where, label("db_host"))
    match = re.search(r'database "([^"]+)" does not exist', text)
    if match:
        return "database %r does not exist on %s: check %s" % (match.group(1), where, label("db_name"))
    match = re.search(r'role "([^"]+)" does not exist', text)
    if match:
        return "PostgreSQL role %r does not exist on %s: check %s" % (match.group(1), where, label("db_user"))
    if "no pg_hba.conf entry" in lowered:
        return "PostgreSQL at %s refuses user %r from this host (no pg_hba.conf entry): allow it in pg_hba.conf" % (where, user)
    if "lock table" in lowered and ("lock timeout" in lowered or "statement timeout" in lowered):
        table = re.search(r"LOCK TABLE (\S+) IN", text)
        return ("pg_dump could not lock %s within %s: another session holds a conflicting lock (ALTER TABLE, a "
                "migration, VACUUM FULL, a long transaction?): find it in pg_locks and pg_stat_activity, run the backup "
                "again when it is done, or raise %s" % (table.group(1) if table else "a table",
                                                        "BACKUP_LOCK_WAIT_TIMEOUT", label("lock_wait_timeout")))
    if "permission denied to create database" in lowered:
        return "user %r may not create databases on %s: ALTER ROLE %s CREATEDB, or restore as a user who may" % (user, where, user)
    return "PostgreSQL error on %s (database %r): %s" % (where, database, failure_detail(text))


def explain_tls_error(text, where, user, label):
    """One line for a failure of TLS (libpq's text in it), or None when ``text`` is about something else.

    What libpq says (the CA file it looked for, the name the certificate holds, the server's pg_hba.conf line) is
    kept; the sentence names the setting to change (``label(field)``).
    """
    lowered = text.lower()
    if not re.search(r"ssl|tls|certificate|private key|no encryption", lowered):
        return None
    detail = failure_detail(text)
    ca_cert, sslmode = label("db_ca_cert"), label("db_sslmode")
    client_files = "%s and %s" % (label("db_ssl_cert"), label("db_ssl_key"))
    match = re.search(r'root certificate file "([^"]*)" does not exist', text)
    if match:
        return ("PostgreSQL at %s: the sslmode (%s) verifies the server's certificate, but libpq has no CA certificate "
                "to verify it with (it looked for %s): set %s to the CA certificate that signed the server's, or set %s "
                "to require (encrypted, not verified)" % (where, sslmode, match.group(1), ca_cert, sslmode))
    if "certificate verify failed" in lowered:
        return ("PostgreSQL at %s: its certificate is not signed by the CA certificate libpq was given (%s) (libpq: %s): "
                "point %s at the CA that signed the server's certificate" % (where, ca_cert, detail, ca_cert))
    match = re.search(r'server certificate for "([^"]*)"(?: \(and \d+ other names?\))? does not match host name '
                      r'"([^"]*)"', text)
    if match:
        return ("PostgreSQL at %s: its certificate is for %s, not %s (sslmode verify-full checks the name): set %s to a "
                "name the certificate holds, or %s to verify-ca"
                % (where, match.group(1), match.group(2), label("db_host"), sslmode))
    match = re.search(r'private key file "([^"]*)" has group or world access', text)
    if match:
        return ("libpq refuses the private key %s (%s): others can read it: chmod 0600 %s (owned by the user the "
                "backup runs as)" % (match.group(1), label("db_ssl_key"), match.group(1)))
    if "connection requires a valid client certificate" in lowered:
        return ("PostgreSQL at %s wants a client certificate from user %r (pg_hba.conf `cert`, or clientcert=): set %s"
                % (where, user, client_files))
    if "certificate authentication failed" in lowered:
        return ("PostgreSQL at %s refused the client certificate for user %r (%s): its CN must be the user's name, or "
                "mapped to it in pg_ident.conf: check %s" % (where, user, detail, client_files))
    if "alert unknown ca" in lowered or "alert bad certificate" in lowered or "alert certificate unknown" in lowered:
        return ("PostgreSQL at %s does not trust the client certificate (libpq: %s): it must be signed by a CA of the "
                "server's ssl_ca_file: check %s" % (where, detail, client_files))
    if ("no encryption" in lowered and ("pg_hba.conf rejects connection" in lowered or "no pg_hba.conf entry" in lowered)):
        return ("PostgreSQL at %s takes user %r only over TLS (server: %s): set %s to verify-full (or require), not "
                "disable or allow" % (where, user, detail, sslmode))
    if "server does not support ssl" in lowered:
        return ("PostgreSQL at %s does not offer TLS, but %s asks for it (libpq: %s): turn ssl on in the server's "
                "postgresql.conf, or change %s" % (where, sslmode, detail, sslmode))
    if re.search(r"could not (open|read|load) (root )?certificate|could not load private key|certificate present, but "
                 r"not private key|certificate does not match private key", lowered):
        return "libpq cannot use the TLS files for PostgreSQL at %s (%s): check %s, %s" % (
            where, detail, ca_cert, client_files)
    if "ssl error:" in lowered:  # e.g. "EVP lib": a CA of the same name as the server's issuer, but another key
        return ("TLS with PostgreSQL at %s failed (libpq: %s): check that %s is the CA that signed the server's "
                "certificate, and %s" % (where, detail, ca_cert, client_files))
    return None


def check_tls_files(settings, env):
    """Refuse, before a client program runs, the TLS files libpq would not use: ConfigError naming the setting.

    ``env``: the client programs' environment (:func:`child_environment`), where the settings' files
    (``db_ca_cert``, ``db_ssl_cert``, ``db_ssl_key``, which win) or the user's own PGSSLROOTCERT/PGSSLCERT/PGSSLKEY
    are. A file a setting names must be a regular file this user can read. A private key must pass libpq's own rule
    (no group or world access; owned by root, it may be group-readable): libpq would refuse it with every connection.
    """
    for field, name, what in TLS_FILES:
        path = env.get(name)
        if not path or (field == "db_ca_cert" and path == "system"):  # libpq 16's "the system's CAs"
            continue
        from_setting = bool(getattr(settings, field, None))
        where = settings.label(field) if from_setting else name
        try:
            info = os.stat(path)
        except FileNotFoundError:
            if from_setting:
                raise ConfigError("the %s %s (%s) does not exist: copy it there, or correct %s" % (what, path, where, where))
            continue  # the user's own variable: libpq decides (a missing root.crt is no error with sslmode require)
        except OSError as exc:
            raise ConfigError("cannot use the %s %s (%s): %s" % (what, path, where, exc.strerror or exc))
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError("the %s %s (%s) is not a regular file: name the PEM file" % (what, path, where))
        if not os.access(path, os.R_OK):
            raise ConfigError("cannot read the %s %s (%s): permission denied: let the user the backup runs as read it"
                              % (what, path, where))
        if name == "PGSSLKEY" and _libpq_refuses_key(info):
            raise ConfigError("the %s %s (%s) is mode %04o: libpq refuses a private key others can read: chmod 0600 %s "
                              "(owned by the user the backup runs as; owned by root, 0640 is allowed)"
                              % (what, path, where, stat.S_IMODE(info.st_mode), path))


def _libpq_refuses_key(info):
    """libpq's rule for a client key (fe-secure-openssl.c): owned by root, no group write or execute and nothing for
    others; else no access at all for group and others."""
    if info.st_uid == 0:
        return bool(info.st_mode & (stat.S_IWGRP | stat.S_IXGRP | stat.S_IRWXO))
    return bool(info.st_mode & (stat.S_IRWXG | stat.S_IRWXO))


def failure_detail(stderr):
    """The cause of a client program's failure, from its stderr, in one line.

    Not the last line: pg_dump and pg_restore end with context ("Command was: ..."), and
    psql echoes the statement ("LINE 1: ..."). The server's own message is preferred
    ("Error message from server: ..."), else the first error line; the statement that
    failed is added, shortened, when the programs name it.
    """
    lines = [line.strip() for line in (stderr or "").split("\n") if line.strip()]
    server = [line.split("Error message from server:", 1)[1].strip() for line in lines
              if "Error message from server:" in line]
    errors = [line for line in lines if re.search(r"(^|: )(ERROR|FATAL|PANIC|error):", line)]
    detail = (server or errors or lines or ["no error text"])[0]
    detail = re.sub(r"^(psql:<stdin>:\d+: |(psql|pg_dump|pg_restore): (error: )?)", "", detail)
    detail = re.sub(r"^(could not execute query: )?(ERROR|FATAL):\s+", "", detail)
    command = [re.split(r"(?:Command|Query) was:", line, maxsplit=1)[1].strip() for line in lines
               if re.match(r"^((pg_dump|pg_restore): detail: )?(Command|Query) was:", line)]
    if command:
        statement = command[0] if len(command[0]) <= 100 else command[0][:97] + "..."
        detail += " (while running: %s)" % statement
    return detail


def _risks_of(rows):
    """role_risks' phrases from its query's rows; whatever cannot be read counts as a risk."""
    risks = []
    for row in rows:
        if len(row) != 6 or row[0] not in ("attributes", "member"):
            risks.append("its roles could not be read")
            continue
        kind, role, superuser, createrole, replication, bypassrls = row
        if kind == "attributes":
            for value, phrase in ((superuser, "it is a superuser"), (createrole, "it has CREATEROLE"),
                                  (replication, "it has REPLICATION"), (bypassrls, "it has BYPASSRLS")):
                if value != "f":
                    risks.append(phrase)
        elif role in DANGEROUS_ROLES:
            risks.append("it is a member of %s" % role)
        elif superuser == "t":
            risks.append("it is a member of superuser role %s" % role)
        else:
            found = [name for name, value in (("CREATEROLE", createrole), ("BYPASSRLS", bypassrls)) if value == "t"]
            risks.append("it is a member of %s, which has %s" % (role, " and ".join(found) or "privileges"))
    return risks


class PgClient:
    """One PostgreSQL server reached with the client programs, as one login.

    By default the settings' login (``db_user``/``db_password``, the admin); with ``user`` (and its
    ``password``, None for none) that login instead, on the same host, port and client programs.
    ``user`` is the login in use.
    """

    def __init__(self, settings, user=None, password=None):
        if user is None and password is not None:
            raise ValueError("a password without a user: name the login it belongs to")
        self.settings = settings
        self.bin_dir = find_bin_dir(settings.pg_bin_dir)
        check_tls_files(settings, child_environment(settings, os.environ))
        self.where = "%s:%s" % (settings.db_host, settings.db_port)
        self._admin = user is None
        self.user = settings.db_user if self._admin else user
        self._password = SETTINGS_PASSWORD if self._admin else password

    def as_login(self, user, password):
        """A client of the same server logging in as ``user`` with ``password`` (which travels in PGPASSWORD only)."""
        return PgClient(self.settings, user=user, password=password)

    def _label(self, field):
        if not self._admin and field in ("db_password", "db_user"):
            return "the password of login %r" % self.user if field == "db_password" else "the login %r" % self.user
        return self.settings.label(field)

    def tool(self, name):
        """Absolute path of a client program."""
        return os.path.join(self.bin_dir, name)

    def environment(self):
        """The child environment (see :func:`child_environment`), with this login's password."""
        return child_environment(self.settings, os.environ, password=self._password)

    def connection_args(self, database):
        """``-h -p -U -d`` arguments (no password); the database only ever as ``dbname='<quoted>'``."""
        return ["-h", self.settings.db_host, "-p", str(self.settings.db_port), "-U", self.user,
                "-d", "dbname=%s" % conninfo_quote(database)]

    def query(self, sql, database=None, step="query"):
        """Run SQL with psql (on its stdin, under search_path=pg_catalog); rows as lists of strings."""
        database = database or self.settings.db_maintenance_db
        argv = [self.tool("psql"), "-X", "-q", "-A", "-t", "-F", "\x1f", "-v", "ON_ERROR_STOP=1"]
        argv += self.connection_args(database) + ["-f", "-"]
        env = self.environment()
        env["PGOPTIONS"] = QUERY_PGOPTIONS
        env["PGAPPNAME"] = own_application_name()  # this process's statements, for wait_for_own_statements
        # subprocess, not AnsibleModule.run_command: the engine also runs without Ansible (the host command)
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE,  # pylint: disable=ansible-bad-function
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = proc.communicate(sql.encode("utf-8"))
        except BaseException:
            _finish_statement(proc)
            raise
        if proc.returncode != 0:
            raise PostgresError(explain_client_error(err.decode("utf-8", "replace"), self.where,
                                                     self.user, database, self._label), step=step)
        lines = out.decode("utf-8", "replace").splitlines()
        return [line.split("\x1f") for line in lines if line != ""]

    def scalar(self, sql, database=None, step="query"):
        """The first column of the first row, or None."""
        rows = self.query(sql, database, step)
        return rows[0][0] if rows else None

    def client_version(self, name="pg_dump"):
        """(major, minor) of a client program."""
        try:
            out = subprocess.run([self.tool(name), "--version"], env=self.environment(),  # pylint: disable=ansible-bad-function
                                 stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 check=False).stdout.decode("utf-8", "replace")
        except OSError as exc:
            raise ConfigError("cannot run %s: %s" % (self.tool(name), exc))
        return parse_client_version(out)

    def server_version_num(self, database=None):
        """The server's ``server_version_num`` (e.g. 150018); also proves we can connect and log in."""
        return int(self.scalar("SHOW server_version_num", database, step="connect"))

    def check_client_version(self, server_version_num, name="pg_dump"):
        """Refuse a client older than the server's major version, saying what to install."""
        major, minor = self.client_version(name)
        server_major = server_version_num // 10000
        if major < server_major:
            raise ConfigError("%s %d.%d cannot %s a PostgreSQL %d server: install postgresql-client-%d "
                              "(apt-get install postgresql-client-%d) or set PG_BIN_DIR to its bin directory"
                              % (name, major, minor, "dump" if name == "pg_dump" else "restore into",
                                 server_major, server_major, server_major))
        return "%d.%d" % (major, minor)

    def database_exists(self, name):
        """Whether a database of that name exists."""
        return self.scalar("SELECT 1 FROM pg_catalog.pg_database WHERE datname = %s" % quote_literal(name)) == "1"

    def database_size(self, name):
        """Size on disk in bytes."""
        return int(self.scalar("SELECT pg_catalog.pg_database_size(%s)" % quote_literal(name)))

    def database_settings(self, name):
        """Encoding and locale, so a restore can recreate the database alike."""
        rows = self.query("SELECT pg_catalog.pg_encoding_to_char(encoding), datcollate, datctype "
                          "FROM pg_catalog.pg_database WHERE datname = %s" % quote_literal(name))
        if not rows:
            return {}
        encoding, collate, ctype = rows[0]
        return {"encoding": encoding, "lc_collate": collate, "lc_ctype": ctype}

    def table_count(self, database):
        """Tables a restore should have brought back (see TABLE_COUNT_SQL)."""
        return int(self.scalar(TABLE_COUNT_SQL, database, step="verify"))

    def active_connections(self, name):
        """Sessions connected to a database, other than ours."""
        return int(self.scalar("SELECT pg_catalog.count(*) FROM pg_catalog.pg_stat_activity WHERE datname = %s "
                               "AND pid <> pg_catalog.pg_backend_pid()" % quote_literal(name)))

    def create_database(self, name, database_settings=None, owner=None):
        """CREATE DATABASE from template0 (owned by ``owner`` when given), with the source's encoding and locale
        when the server has them: "exact", else the server's defaults: "server default"."""
        settings = database_settings or {}
        base = "CREATE DATABASE %s" % quote_ident(name)
        if owner:
            base += " OWNER %s" % quote_ident(owner)
        base += " TEMPLATE template0"
        if settings.get("encoding"):
            full = base + " ENCODING %s LC_COLLATE %s LC_CTYPE %s" % (
                quote_literal(settings["encoding"]), quote_literal(settings.get("lc_collate", "C")),
                quote_literal(settings.get("lc_ctype", "C")))
            try:
                self.query(full, step="create database")
                return "exact"
            except PostgresError:
                if self.database_exists(name):
                    raise
        self.query(base, step="create database")
        return "server default"

    def wait_for_own_statements(self, seconds=STATEMENT_FINISH_SECONDS):
        """Wait until no statement of this process's earlier psql runs is still active on the server (at most
        ``seconds``); whether none is. A psql killed with this process (SIGTERM to the process group, as systemctl stop
        sends it) leaves its statement running there: a CREATE DATABASE that commits after a clean-up looked for it
        would be left behind."""
        sql = ("SELECT pg_catalog.count(*) FROM pg_catalog.pg_stat_activity WHERE application_name = %s "
               "AND state <> 'idle' AND pid <> pg_catalog.pg_backend_pid()" % quote_literal(own_application_name()))
        deadline = time.monotonic() + seconds
        while self.scalar(sql, step="clean-up") != "0":
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)
        return True

    def drop_database(self, name):
        """DROP DATABASE, ending any sessions in it."""
        self.query("DROP DATABASE IF EXISTS %s WITH (FORCE)" % quote_ident(name), step="drop database")

    def swap_databases(self, staging, target, replaced=None):
        """``staging`` becomes ``target``, and the existing ``target`` (when ``replaced`` is given) becomes ``replaced``,
        in one transaction: an interruption or a failure between the two renames cannot leave ``target`` missing."""
        renames = [(target, replaced)] if replaced is not None else []
        renames.append((staging, target))
        statements = "".join("ALTER DATABASE %s RENAME TO %s;\n" % (quote_ident(old), quote_ident(new))
                             for old, new in renames)
        self.query("BEGIN;\n%sCOMMIT;\n" % statements, step="rename database")

    # -- roles (run as the admin login) ------------------------------------------------------------

    def role_exists(self, name):
        """Whether a role of that name exists."""
        return self.scalar("SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = %s" % quote_literal(name),
                           step="restore role") == "1"

    def is_superuser(self, name):
        """Whether that role is a superuser (False when there is no such role)."""
        return self.scalar("SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = %s" % quote_literal(name),
                           step="restore role") == "t"

    def role_risks(self, name):
        """Why this role must not run an archive's SQL, as short phrases; [] when nothing is found.

        Superuser, CREATEROLE, REPLICATION, BYPASSRLS; membership, direct or indirect, in a predefined
        role that reaches the server's files or programs or every table (DANGEROUS_ROLES), or in a role
        that is a superuser or has CREATEROLE or BYPASSRLS (a member may SET ROLE to it). A role that
        does not exist is an error (PostgresError), not "no risk".
        """
        literal = quote_literal(name)
        dangerous = ", ".join(quote_literal(role) for role in DANGEROUS_ROLES)
        # one row of attributes, then one per risky role it is a member of: kind, role, super, createrole,
        # replication, bypassrls (booleans as psql prints them: t/f)
        sql = (
            "SELECT 'attributes', '', r.rolsuper, r.rolcreaterole, r.rolreplication, r.rolbypassrls "
            "FROM pg_catalog.pg_roles r WHERE r.rolname = %(name)s "
            "UNION ALL "
            "SELECT 'member', g.rolname::text, g.rolsuper, g.rolcreaterole, g.rolreplication, g.rolbypassrls "
            "FROM pg_catalog.pg_roles r JOIN pg_catalog.pg_roles g ON g.oid <> r.oid "
            "WHERE r.rolname = %(name)s AND (g.rolname IN (%(dangerous)s) OR g.rolsuper OR g.rolcreaterole "
            "OR g.rolbypassrls) AND pg_catalog.pg_has_role(r.oid, g.oid, 'MEMBER')"
            % {"name": literal, "dangerous": dangerous})
        rows = self.query(sql, step="restore role")
        if not any(row[0] == "attributes" for row in rows):
            raise PostgresError("role %r does not exist on %s" % (name, self.where), step="restore role")
        return _risks_of(rows)

    def create_restore_role(self, name):
        """Create ``name`` as a plain role that cannot log in; True if created, False if it existed (unchanged).

        Restores log in as a temporary member of it (:meth:`create_login_role`), so it needs no password.
        """
        if self.role_exists(name):
            return False
        try:
            self.query("CREATE ROLE %s NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS"
                       % quote_ident(name), step="restore role")
        except PostgresError:
            if self.role_exists(name):  # made meanwhile by someone else
                return False
            raise
        return True

    def create_login_role(self, name, password, valid_until, member_of):
        """Create ``name``: a plain login role, a member of ``member_of`` (inheriting its rights), that logs in with
        ``password`` until ``valid_until``. Only the SCRAM verifier travels in the statement."""
        if not isinstance(valid_until, datetime.datetime) or valid_until.utcoffset() is None:
            raise ValueError("valid_until must be a timezone-aware datetime")
        until = valid_until.astimezone(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S+00")
        self.query("CREATE ROLE %s LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT "
                   "PASSWORD %s VALID UNTIL %s IN ROLE %s"
                   % (quote_ident(name), quote_literal(scram_sha256_verifier(password)), quote_literal(until),
                      quote_ident(member_of)), step="restore role")

    def drop_role(self, name, database=None):
        """DROP ROLE, after DROP OWNED BY in ``database`` (what it still owns there and the rights granted to it)."""
        if database is not None:
            self.query("DROP OWNED BY %s" % quote_ident(name), database=database, step="restore role")
        self.query("DROP ROLE IF EXISTS %s" % quote_ident(name), step="restore role")

    def side_databases(self):
        """Databases named like a restore's staging or replaced database, or a drill's scratch database (catalog/dbnames.py):
        ``[(name, size bytes, sessions)]``."""
        rows = self.query(
            "SELECT d.datname, pg_catalog.pg_database_size(d.oid), (SELECT pg_catalog.count(*) FROM "
            "pg_catalog.pg_stat_activity a WHERE a.datname = d.datname AND a.pid <> pg_catalog.pg_backend_pid()) "
            "FROM pg_catalog.pg_database d WHERE d.datname LIKE '%\\_\\_restoring\\_%' "
            "OR d.datname LIKE '%\\_\\_replaced\\_%' OR d.datname LIKE '%\\_\\_drill\\_%' ORDER BY 1", step="leftovers")
        return [(row[0], int(row[1]), int(row[2])) for row in rows if len(row) == 3]

    def restore_logins(self, role):
        """A restore role's temporary logins (``<role>_<8 hex>``): ``[(name, valid until: aware datetime or None)]``."""
        pattern = "^" + re.escape(role[:54]) + "_[0-9a-f]{8}$"
        rows = self.query("SELECT rolname, coalesce(pg_catalog.to_char(rolvaliduntil AT TIME ZONE 'UTC', "
                          "'YYYY-MM-DD\"T\"HH24:MI:SS'), '') FROM pg_catalog.pg_roles WHERE rolname ~ %s ORDER BY 1"
                          % quote_literal(pattern), step="leftovers")
        found = []
        for row in rows:
            if len(row) == 2:
                until = (datetime.datetime.strptime(row[1], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=datetime.timezone.utc)
                         if row[1] else None)
                found.append((row[0], until))
        return found

    def reassign_owned(self, database, from_role, to_role):
        """REASSIGN OWNED BY ``from_role`` TO ``to_role`` in ``database`` (and its shared objects)."""
        self.query("REASSIGN OWNED BY %s TO %s" % (quote_ident(from_role), quote_ident(to_role)), database=database,
                   step="reassign owned")

    # -- argv of the streaming programs --------------------------------------------------------------

    def dump_argv(self, database):
        """pg_dump in custom format, uncompressed (we compress faster), waiting at most BACKUP_LOCK_WAIT_TIMEOUT for a lock."""
        return ([self.tool("pg_dump"), "--format=custom", "--compress=0", "--no-password",
                 "--lock-wait-timeout=%ds" % self.settings.lock_wait_timeout] + self.connection_args(database))

    def restore_argv(self, database, no_owner=False):
        """pg_restore of a custom-format archive read from stdin into ``database``, stopping at the first error."""
        argv = [self.tool("pg_restore"), "--exit-on-error", "--no-password"]
        if no_owner:
            argv += ["--no-owner", "--no-privileges"]
        return argv + self.connection_args(database)

    def script_argv(self, database):
        """psql running a plain-SQL script from stdin into ``database`` in one transaction, stopping at the first error."""
        return ([self.tool("psql"), "-X", "-q", "--no-password", "-v", "ON_ERROR_STOP=1", "--single-transaction"]
                + self.connection_args(database) + ["-f", "-"])

    def list_argv(self):
        """pg_restore -l: reads just an archive's table of contents from stdin."""
        return [self.tool("pg_restore"), "--list"]

    def basebackup_argv(self, fast_checkpoint=False):
        """pg_basebackup of the main tablespace as one tar on stdout: no WAL in it (wal-push archives the WAL), its
        manifest (SHA-256 of every file) inside, nothing written to local disk."""
        argv = [self.tool("pg_basebackup"), "--pgdata=-", "--format=tar", "--wal-method=none", "--no-password",
                "--manifest-checksums=SHA256", "--label=quankey-backup base backup", "--no-sync",
                "--checkpoint=%s" % ("fast" if fast_checkpoint else "spread")]
        return argv + ["-h", self.settings.db_host, "-p", str(self.settings.db_port), "-U", self.user]

    def cluster_facts(self):
        """What a base backup checks first, in one query (each psql is a process): ``{"version": server_version_num,
        "identifier": system identifier, "size": bytes of every database, "replication": whether this login may
        replicate, "extra_tablespaces": [[name, location], ...] beyond pg_default and pg_global}``."""
        rows = self.query("SELECT pg_catalog.current_setting('server_version_num'), "
                          "(SELECT system_identifier FROM pg_catalog.pg_control_system()), "
                          "(SELECT pg_catalog.sum(pg_catalog.pg_database_size(oid)) FROM pg_catalog.pg_database), "
                          "(SELECT rolreplication OR rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user), "
                          "(SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_array(spcname, "
                          "pg_catalog.pg_tablespace_location(oid)) ORDER BY spcname) FROM pg_catalog.pg_tablespace "
                          "WHERE spcname NOT IN ('pg_default', 'pg_global'))", step="connect")
        version, identifier, size, replication, extra = rows[0]
        return {"version": int(version), "identifier": identifier, "size": int(size or 0), "replication": replication == "t",
                "extra_tablespaces": json.loads(extra) if extra else []}
