# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""PostgreSQL through its own client programs (psql, pg_dump, pg_restore).

Programs run as argument lists; the password travels in ``PGPASSWORD`` in the
child's environment, never in argv. Client failures become one-line
:class:`PostgresError` messages that say what to check.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import glob
import os
import re
import shutil
import subprocess

from .config import FIELD_VARIABLES
from .errors import ConfigError, PostgresError

PG_LIB_GLOB = "/usr/lib/postgresql/*/bin"
_VERSION_RE = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")
_TOC_TABLE_RE = re.compile(r"^\d+; 1259 \d+ TABLE ")  # 1259: pg_class; TABLE DATA entries have 0
# Tables a restore should bring back: ordinary and partitioned, outside the system
# schemas, not owned by an extension (extensions recreate theirs).
TABLE_COUNT_SQL = (
    "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
    "AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%' "
    "AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass "
    "AND d.objid = c.oid AND d.deptype = 'e')"
)


def quote_ident(name):
    """A SQL identifier, double-quoted."""
    return '"%s"' % name.replace('"', '""')


def quote_literal(value):
    """A SQL string literal."""
    return "'%s'" % value.replace("'", "''")


def count_toc_tables(listing):
    """How many TABLE entries a ``pg_restore -l`` listing holds."""
    return sum(1 for line in listing.splitlines() if _TOC_TABLE_RE.match(line))


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


def explain_client_error(stderr, where, user, database, label=None):
    """One line for a libpq/psql failure, naming the likely fix (``label(field)`` names where a setting is set)."""
    label = label or (lambda field: FIELD_VARIABLES[field])
    text = (stderr or "").strip()
    lowered = text.lower()
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
    if "permission denied to create database" in lowered:
        return "user %r may not create databases on %s: ALTER ROLE %s CREATEDB, or restore as a user who may" % (user, where, user)
    first = [line for line in text.splitlines() if line.strip()]
    detail = first[-1] if first else "no error text"
    detail = re.sub(r"^(psql|pg_dump|pg_restore): (error: )?", "", detail)
    return "PostgreSQL error on %s (database %r): %s" % (where, database, detail)


class PgClient:
    """One PostgreSQL server reached with the client programs."""

    def __init__(self, settings):
        self.settings = settings
        self.bin_dir = find_bin_dir(settings.pg_bin_dir)
        self.where = "%s:%s" % (settings.db_host, settings.db_port)

    def tool(self, name):
        """Absolute path of a client program."""
        return os.path.join(self.bin_dir, name)

    def environment(self):
        """The child environment: ours minus stray PG* settings, plus the connection's."""
        env = dict((k, v) for k, v in os.environ.items() if not k.startswith("PG"))
        env.update(self.settings.pg_environment())
        env["LC_MESSAGES"] = "C"
        return env

    def connection_args(self, database):
        """``-h -p -U -d`` arguments (no password)."""
        return ["-h", self.settings.db_host, "-p", str(self.settings.db_port), "-U", self.settings.db_user, "-d", database]

    def query(self, sql, database=None, step="query"):
        """Run one SQL statement with psql; rows as lists of strings."""
        database = database or self.settings.db_maintenance_db
        argv = [self.tool("psql"), "-X", "-q", "-A", "-t", "-F", "\x1f", "-v", "ON_ERROR_STOP=1"]
        argv += self.connection_args(database) + ["-c", sql]
        # subprocess, not AnsibleModule.run_command: the engine also runs without Ansible (the host command)
        proc = subprocess.run(argv, env=self.environment(), stdin=subprocess.DEVNULL,  # pylint: disable=ansible-bad-function
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
        if proc.returncode != 0:
            raise PostgresError(explain_client_error(proc.stderr.decode("utf-8", "replace"), self.where,
                                                     self.settings.db_user, database, self.settings.label), step=step)
        lines = proc.stdout.decode("utf-8", "replace").splitlines()
        return [line.split("\x1f") for line in lines if line != ""]

    def scalar(self, sql, database=None, step="query"):
        """The first column of the first row, or None."""
        rows = self.query(sql, database, step)
        return rows[0][0] if rows else None

    def client_version(self, name="pg_dump"):
        """(major, minor) of a client program."""
        try:
            out = subprocess.run([self.tool(name), "--version"],  # pylint: disable=ansible-bad-function
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False).stdout.decode("utf-8", "replace")
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
        return self.scalar("SELECT 1 FROM pg_database WHERE datname = %s" % quote_literal(name)) == "1"

    def database_size(self, name):
        """Size on disk in bytes."""
        return int(self.scalar("SELECT pg_database_size(%s)" % quote_literal(name)))

    def database_settings(self, name):
        """Encoding and locale, so a restore can recreate the database alike."""
        rows = self.query("SELECT pg_encoding_to_char(encoding), datcollate, datctype FROM pg_database "
                          "WHERE datname = %s" % quote_literal(name))
        if not rows:
            return {}
        encoding, collate, ctype = rows[0]
        return {"encoding": encoding, "lc_collate": collate, "lc_ctype": ctype}

    def table_count(self, database):
        """Tables a restore should have brought back (see TABLE_COUNT_SQL)."""
        return int(self.scalar(TABLE_COUNT_SQL, database, step="verify"))

    def active_connections(self, name):
        """Sessions connected to a database, other than ours."""
        return int(self.scalar("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()"
                               % quote_literal(name)))

    def create_database(self, name, database_settings=None):
        """CREATE DATABASE from template0, with the source's encoding and locale when the server has them."""
        settings = database_settings or {}
        base = "CREATE DATABASE %s TEMPLATE template0" % quote_ident(name)
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

    def drop_database(self, name):
        """DROP DATABASE, ending any sessions in it."""
        self.query("DROP DATABASE IF EXISTS %s WITH (FORCE)" % quote_ident(name), step="drop database")

    def rename_database(self, old, new):
        """ALTER DATABASE ... RENAME TO ..."""
        self.query("ALTER DATABASE %s RENAME TO %s" % (quote_ident(old), quote_ident(new)), step="rename database")

    def dump_argv(self, database):
        """pg_dump in custom format, uncompressed (we compress faster, in parallel)."""
        return [self.tool("pg_dump"), "--format=custom", "--compress=0", "--no-password"] + self.connection_args(database)

    def restore_argv(self, database, no_owner=False):
        """pg_restore of a custom-format archive read from stdin into ``database``, stopping at the first error."""
        argv = [self.tool("pg_restore"), "--exit-on-error", "--no-password"]
        if no_owner:
            argv += ["--no-owner", "--no-privileges"]
        return argv + self.connection_args(database)

    def list_argv(self):
        """pg_restore -l: reads just an archive's table of contents from stdin."""
        return [self.tool("pg_restore"), "--list"]
