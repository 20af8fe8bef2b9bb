# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    # PostgreSQL connection options; argument spec: module_utils/ansible_common.py postgres_argument_spec()
    DOCUMENTATION = r"""
options:
  login_host:
    description:
      - Host name or IP address of the PostgreSQL server. Defaults to V(localhost).
      - If not set, the environment variable E(DB_HOST) is used.
    type: str
  login_port:
    description:
      - TCP port of the PostgreSQL server. Defaults to V(5432).
      - If not set, the environment variable E(DB_PORT) is used.
    type: int
  login_user:
    description:
      - PostgreSQL role to log in as. It needs to read every table of O(db) for a backup, and to create
        databases for a restore. Defaults to V(postgres).
      - If not set, the environment variable E(DB_USER) is used.
    type: str
  login_password:
    description:
      - Password of O(login_user). It reaches the PostgreSQL client programs through their environment,
        never their command line.
      - If not set, the environment variable E(PGPASSWORD) is used.
      - This value is a secret and is never logged.
    type: str
  login_unix_socket:
    description:
      - Directory of the server's Unix domain socket. When set, it is used instead of O(login_host).
    type: path
  db:
    description:
      - Name of the database whose backups the task takes, restores or checks. Together with O(host_id) it
        names the series of backups in the bucket.
      - If not set, the environment variable E(DB_NAME) is used.
    type: str
  ssl_mode:
    description:
      - How to use SSL/TLS with the server (libpq's C(sslmode)). When it is not set, libpq's default applies,
        V(prefer) (or C(PGSSLMODE) in O(env_file)).
      - If not set, the environment variable E(DB_SSLMODE) is used.
    type: str
    choices: [disable, allow, prefer, require, verify-ca, verify-full]
  ca_cert:
    description:
      - Absolute path, on the managed host, of a file of CA certificates (PEM) the server's certificate must be signed
        by (libpq's C(sslrootcert)). With O(ssl_mode=verify-ca) or O(ssl_mode=verify-full) and no O(ca_cert), libpq
        looks for C(~/.postgresql/root.crt) of the user the task runs as.
      - It must exist and be readable before any client program runs. It reaches C(pg_dump), C(pg_restore) and C(psql)
        as C(PGSSLROOTCERT) in their environment and wins over a C(PGSSLROOTCERT) of the environment or O(env_file).
      - If not set, the environment variable E(DB_SSLROOTCERT) is used.
    type: path
    aliases: [ssl_rootcert]
  ssl_cert:
    description:
      - Absolute path, on the managed host, of the client certificate (PEM) presented to the server (libpq's
        C(sslcert)), for C(cert) authentication in C(pg_hba.conf) or C(clientcert=verify-full).
      - It reaches the client programs as C(PGSSLCERT) and wins over a C(PGSSLCERT) of the environment or O(env_file).
      - If not set, the environment variable E(DB_SSLCERT) is used.
    type: path
  ssl_key:
    description:
      - Absolute path, on the managed host, of the private key of O(ssl_cert) (libpq's C(sslkey)).
      - libpq refuses a key others can read, so it is refused before any client program runs unless it is mode
        C(0600) (or stricter) and owned by the user the task runs as, or owned by root with mode C(0640) and readable
        by that user's group.
      - It reaches the client programs as C(PGSSLKEY) and wins over a C(PGSSLKEY) of the environment or O(env_file).
      - If not set, the environment variable E(DB_SSLKEY) is used.
    type: path
  maintenance_db:
    description:
      - Database to connect to for server-wide work, such as creating the database a restore goes into. Defaults to
        V(postgres).
      - If not set, the environment variable E(DB_MAINTENANCE_DB) is used.
    type: str
  pg_bin_dir:
    description:
      - Directory of the PostgreSQL client programs (C(psql), C(pg_dump), C(pg_restore)).
      - By default the newest C(/usr/lib/postgresql/<version>/bin) is used, else the programs on the search
        path. The client must be at least as new as the server.
      - If not set, the environment variable E(PG_BIN_DIR) is used.
    type: path
  restore_role:
    description:
      - Plain PostgreSQL role that a restored backup's SQL runs as. For each restore a temporary login role that is a
        member of it is made, with a password valid for that restore only, and dropped afterwards, so the archive
        cannot use O(login_user)'s privileges (C(COPY ... TO PROGRAM), untrusted languages, other roles).
      - It is created C(NOLOGIN) on first use, and refused if it is O(login_user), a superuser, or can create roles,
        replicate or bypass row security (or is a member of a role that can).
      - The temporary login logs in with a password, so C(pg_hba.conf) must allow password logins of members of this
        role (for example C(host all +quankey_restore 127.0.0.1/32 scram-sha-256)).
      - Only M(quankey.backup.s3_backup_restore) uses it (and runs the SQL as O(login_user) instead only with
        O(quankey.backup.s3_backup_restore#module:restore_as_admin=true)); the other modules accept it so that
        C(module_defaults) can set it once.
      - Defaults to V(quankey_restore).
      - If not set, the environment variable E(BACKUP_RESTORE_ROLE) is used.
    type: str
"""
