# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The settings of the engine, in one table.

Each :class:`Setting` of :data:`TABLE` says where a setting comes from (the seed's environment
variable, read by the host command from its environment and its env file; the module option
and its aliases), what it may be, its default, whether it is a secret and what to do when it
is missing. From the table come :class:`Settings` (fields, defaults, validation),
:func:`settings_from_env`, the variable lists, and, in ansible_common.py, the modules' argument
specs; unit tests check the doc fragments, the modules' docs and docs/CLI.md against it.

Messages name a setting in the caller's words (:class:`Vocabulary`): the variable for the host
command ("BACKUP_RETENTION_DAYS in /etc/quankey/backup.env"), the option for a module ("the
retention_days option"), or the variable and where when a module read it from its environment
or env file.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import re
import socket
import stat
from urllib.parse import urlsplit

from .errors import ConfigError
from .formats import modes, openssl_enc
from .formats.compression import COMPRESSIONS, DEFAULT_COMPRESSION

DEFAULT_ENV_FILE = "/etc/quankey/backup.env"
ENV_FILE_VARIABLE = "QUANKEY_ENV_FILE"

STORAGE_CLASSES = (
    "STANDARD", "STANDARD_IA", "ONEZONE_IA", "INTELLIGENT_TIERING", "GLACIER_IR",
    "REDUCED_REDUNDANCY", "GLACIER", "DEEP_ARCHIVE",
)
DEFAULT_STORAGE_CLASS = "STANDARD_IA"
# S3 Object Lock's modes (BACKUP_OBJECT_LOCK_MODE; unset: objects are not locked).
LOCK_MODES = ("governance", "compliance")
# The encryption modes (formats/modes.py: one registry, described in docs/FORMAT.md).
ENCRYPTIONS = modes.NAMES
DEFAULT_ENCRYPTION = modes.DEFAULT
# The plain role a restored archive's SQL runs as unless a restore is explicitly run as DB_USER (--as-admin).
DEFAULT_RESTORE_ROLE = "quankey_restore"
# Seconds a failing S3 request is retried (connection lost, timeout, 5xx, throttling) before the command gives up.
DEFAULT_RETRY_WINDOW = 300
# Seconds pg_dump waits for a table's lock (held by a migration's ALTER TABLE, say) before the backup fails.
DEFAULT_LOCK_WAIT_TIMEOUT = 300
# botocore's retry modes (AWS_RETRY_MODE); its own retries are off unless one of these settings asks for them.
RETRY_MODES = ("legacy", "standard", "adaptive")
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
# What a host's schedule makes (BACKUP_KIND, the pg_backup role's pg_backup_kind): dumps, base backups and archived
# WAL, or both.
BACKUP_KINDS = ("logical", "physical", "both")

_HOST_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_ROLE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
# libpq variables a user may set for the client programs (TLS files, service files): passed through to them,
# from the environment and from the env file. Every other PG* variable is replaced by what the settings say.
PG_PASSTHROUGH_PREFIXES = ("PGSSL", "PGSERVICE")
PG_PASSTHROUGH_NAMES = ("PGSYSCONFDIR",)
# The libpq variables the TLS settings become in the client programs' environment (Settings.pg_environment). A setting
# wins over the same variable passed through: DB_SSLROOTCERT over a PGSSLROOTCERT of the environment or env file.
PG_SETTING_VARIABLES = (("db_sslmode", "PGSSLMODE"), ("db_ca_cert", "PGSSLROOTCERT"), ("db_ssl_cert", "PGSSLCERT"),
                        ("db_ssl_key", "PGSSLKEY"))
_ENV_LINE_RE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$")

# Option groups: each is a doc fragment and an argument-spec builder in ansible_common.py that every module takes.
POSTGRES, S3, ENCRYPTION = "postgres", "s3", "encryption"
# Options of settings that only some modules take (each module documents its own).
MODULE = "module"
# Variables of the host command that are no setting of the engine (no Settings field, no module option).
COMMAND = "command"
KINDS = ("str", "int", "bool", "list", "path", "choice", "dict")


class Setting:
    """One row of the settings table.

    ``field``: the :class:`Settings` attribute; ``variable``: the host command's variable, with
    ``alternatives`` read after it (by the host command and the modules); ``option`` and
    ``aliases``: the module option (None: none, the variable only); ``kind``: one of :data:`KINDS`;
    ``default``: the engine's default; ``secret``: never logged or returned (no_log);
    ``group``: POSTGRES, S3 or ENCRYPTION (the option group every module takes), MODULE (an
    option of some modules only), COMMAND (the host command's, no setting) or None (no option);
    ``choices`` (with ``problem``, what a wrong value is not), ``bounds`` (inclusive) and
    ``check`` (``check(label, value)`` returns the value to keep or raises ConfigError) say what is
    valid; ``meaning``: one line for humans; ``hint`` and ``example``: what to do when it is
    missing; ``shown``: the default as docs/CLI.md states it when that is no literal value.
    """

    __slots__ = ("field", "variable", "kind", "default", "option", "aliases", "alternatives", "secret", "group",
                 "choices", "problem", "bounds", "check", "meaning", "hint", "example", "shown")

    def __init__(self, field, variable, kind="str", default=None, option=None, aliases=(), alternatives=(),
                 secret=False, group=None, choices=None, problem=None, bounds=None, check=None, meaning="",
                 hint=None, example=None, shown=None):
        if kind not in KINDS:
            raise ValueError("setting %s: kind %r is not one of %s" % (field, kind, ", ".join(KINDS)))
        self.field = field
        self.variable = variable
        self.kind = kind
        self.default = default
        self.option = option
        self.aliases = tuple(aliases)
        self.alternatives = tuple(alternatives)
        self.secret = secret
        self.group = group
        self.choices = tuple(choices) if choices is not None else None
        self.problem = problem
        self.bounds = bounds
        self.check = check
        self.meaning = meaning
        self.hint = hint
        self.example = example
        self.shown = shown

    def __repr__(self):
        return "Setting(%s, %s)" % (self.field, self.variable)

    @property
    def variables(self):
        """The variable and its alternatives, in the order they are read."""
        return (self.variable,) + self.alternatives

    @property
    def stored(self):
        """Whether it is a field of :class:`Settings` (the host command's own variables are not)."""
        return self.group != COMMAND

    @property
    def documented_default(self):
        """The default as the docs state it: ``shown``, the literal default, or None (no default)."""
        if self.shown is not None:
            return self.shown
        if self.default in (None, ""):
            return None
        return str(self.default).lower() if isinstance(self.default, bool) else str(self.default)

    def validate(self, label, value):
        """``value`` (not None) as it is kept, or ConfigError naming ``label``."""
        if self.kind == "int":
            value = _whole_number(label, value, self.bounds[0], self.bounds[1], self.hint)
        elif self.kind == "bool":
            value = _boolean(label, value)
        elif self.kind == "choice" and value not in self.choices:
            raise ConfigError("%s %r %s: choose one of %s" % (label, value, self.problem, ", ".join(self.choices)))
        elif self.kind == "dict":
            value = _mapping(label, value)
        if self.check is not None:
            value = self.check(label, value)
        return value


def _matching(pattern, rule):
    """A check: the value must match ``pattern``; ``rule`` says what it may hold."""
    def check(label, value):
        if not pattern.match(value):
            raise ConfigError("%s %r %s" % (label, value, rule))
        return value
    return check


def _database_name(label, value):
    if "/" in value or not value.strip():
        raise ConfigError("%s %r is not usable in S3 keys: it may not be empty or contain '/'" % (label, value))
    return value


def _absolute_path(label, value):
    """A file of the managed host libpq reads (TLS): named from /, since a relative name would depend on the directory
    the program runs in. Whether it exists is checked where it is used (adapters/postgres.py check_tls_files)."""
    if not os.path.isabs(value):
        raise ConfigError("%s %r is not an absolute path: name the file from / (e.g. /etc/quankey/pg-ca.crt)"
                          % (label, value))
    return value


def _prefix(label, value):
    return normalize_prefix(value)


def _sql_assertions(label, value):
    """DRILL_ASSERTIONS: a list of SQL texts (a module's option), or the text of a JSON list of strings (a variable)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise ConfigError("%s is not valid JSON (%s): write a JSON list of SQL texts, e.g. %s"
                              % (label, exc, '["SELECT count(*) > 0 FROM users"]'))
    if not isinstance(value, (list, tuple)) or not all(isinstance(item, str) and item.strip() for item in value):
        raise ConfigError("%s must be a list of SQL texts (each one statement returning one row whose first column is "
                          "true), e.g. %s" % (label, '["SELECT count(*) > 0 FROM users"]'))
    return [item.strip() for item in value]


def _seed_kdf(label, value):
    return openssl_enc.parse_kdf(value, label).spec()


def _keep_hint(periods):
    """What to give a calendar retention rule (BACKUP_KEEP_DAILY...) when its value is wrong."""
    return ("give how many of the most recent %s (UTC) keep their newest good backup, a whole number from 0 (the rule "
            "off) to 100000" % periods)


_KEY_PART = "may hold only letters, digits, '.', '_' and '-' (it becomes part of S3 keys)"
_GENERATE = "generate one with `openssl rand -base64 32` and set it"

TABLE = (
    # PostgreSQL: the quankey.backup.postgres doc fragment
    Setting("db_host", "DB_HOST", default="localhost", option="login_host", group=POSTGRES,
            meaning="host name or address of the PostgreSQL server"),
    Setting("db_port", "DB_PORT", "int", 5432, option="login_port", group=POSTGRES, bounds=(1, 65535),
            meaning="TCP port of the PostgreSQL server"),
    Setting("db_name", "DB_NAME", option="db", group=POSTGRES, check=_database_name,
            meaning="the database backed up, restored or checked",
            hint="name the database whose backups to take or use", example="quankey_prod"),
    Setting("db_user", "DB_USER", default="postgres", option="login_user", group=POSTGRES,
            meaning="the PostgreSQL role to log in as"),
    Setting("db_password", "PGPASSWORD", option="login_password", secret=True, group=POSTGRES,
            meaning="its password (to libpq in the environment, never on a command line)"),
    Setting("db_sslmode", "DB_SSLMODE", "choice", option="ssl_mode", group=POSTGRES, choices=SSL_MODES,
            problem="is not a libpq sslmode", meaning="libpq's sslmode (libpq's default, prefer, when unset)"),
    Setting("db_ca_cert", "DB_SSLROOTCERT", "path", option="ca_cert", aliases=("ssl_rootcert",), group=POSTGRES,
            check=_absolute_path, meaning="the CA certificate(s) the server's certificate must be signed by (libpq's "
                                          "sslrootcert)"),
    Setting("db_ssl_cert", "DB_SSLCERT", "path", option="ssl_cert", group=POSTGRES, check=_absolute_path,
            meaning="the client certificate (libpq's sslcert)"),
    Setting("db_ssl_key", "DB_SSLKEY", "path", option="ssl_key", group=POSTGRES, check=_absolute_path,
            meaning="the client certificate's private key (libpq's sslkey; mode 0600)"),
    Setting("db_maintenance_db", "DB_MAINTENANCE_DB", default="postgres", option="maintenance_db", group=POSTGRES,
            meaning="the database connected to for CREATE and RENAME DATABASE"),
    Setting("pg_bin_dir", "PG_BIN_DIR", "path", option="pg_bin_dir", group=POSTGRES,
            shown="newest `/usr/lib/postgresql/*/bin`", meaning="where pg_dump, pg_restore and psql live"),
    Setting("restore_role", "BACKUP_RESTORE_ROLE", default=DEFAULT_RESTORE_ROLE, option="restore_role", group=POSTGRES,
            check=_matching(_ROLE_RE, "is not a usable role name: use letters, digits and '_' (at most 63, not "
                                      "starting with a digit), e.g. quankey_restore"),
            meaning="the plain role a restored backup's SQL runs as",
            hint="name the plain role restored SQL runs as", example=DEFAULT_RESTORE_ROLE),
    Setting("restore_jobs", "RESTORE_JOBS", "int", 0, option="jobs", group=MODULE, bounds=(0, 64),
            meaning="pg_restore processes a restore runs at once for a backup with a range index (0: the host's cores, "
                    "at most 4)"),
    # S3: the quankey.backup.s3 doc fragment (names and aliases as amazon.aws's modules have them)
    Setting("bucket", "S3_BUCKET", option="bucket", group=S3, meaning="the bucket backups go to",
            hint="name the backup bucket", example="quankey-backups-prod"),
    Setting("prefix", "S3_PREFIX", default="", option="prefix", group=S3, check=_prefix,
            meaning="key prefix of every object"),
    Setting("host_id", "BACKUP_HOST_ID", option="host_id", group=S3, check=_matching(_HOST_ID_RE, _KEY_PART),
            shown="short host name", meaning="this host's part of the object keys"),
    Setting("region", "AWS_DEFAULT_REGION", option="region", aliases=("aws_region",), alternatives=("AWS_REGION",),
            group=S3, shown="the profile's or us-east-1", meaning="the bucket's AWS region"),
    Setting("endpoint_url", "S3_ENDPOINT_URL", option="endpoint_url", aliases=("aws_endpoint_url",), group=S3,
            shown="AWS", meaning="an S3-compatible endpoint instead of AWS"),
    Setting("access_key", "AWS_ACCESS_KEY_ID", option="access_key", aliases=("aws_access_key_id", "aws_access_key"),
            alternatives=("AWS_ACCESS_KEY",), group=S3, meaning="AWS access key id"),
    Setting("secret_key", "AWS_SECRET_ACCESS_KEY", option="secret_key", aliases=("aws_secret_access_key", "aws_secret_key"),
            alternatives=("AWS_SECRET_KEY",), secret=True, group=S3, meaning="AWS secret access key"),
    Setting("session_token", "AWS_SESSION_TOKEN", option="session_token", aliases=("aws_session_token",),
            alternatives=("AWS_SECURITY_TOKEN",), secret=True, group=S3, meaning="AWS session token"),
    Setting("profile", "AWS_PROFILE", option="profile", aliases=("aws_profile",), alternatives=("AWS_DEFAULT_PROFILE",),
            group=S3, meaning="a named profile of the AWS config and credentials files (not with the keys)"),
    Setting("ca_bundle", "AWS_CA_BUNDLE", "path", option="aws_ca_bundle", group=S3,
            shown="botocore's", meaning="the CA certificates the S3 endpoint's TLS certificate is checked against"),
    Setting("validate_certs", "S3_VALIDATE_CERTS", "bool", True, option="validate_certs", group=S3,
            meaning="check the S3 endpoint's TLS certificate (false: not at all, with a warning)"),
    Setting("aws_config", "S3_CLIENT_CONFIG", "dict", option="aws_config", group=S3,
            meaning="botocore Config parameters of the S3 client (retries, timeouts...), a JSON object as a variable"),
    # The keys: the quankey.backup.encryption doc fragment
    Setting("encryption_key", "BACKUP_ENCRYPTION_KEY", option="encryption_key", secret=True, group=ENCRYPTION,
            meaning="the active master key", hint=_GENERATE),
    Setting("decryption_keys", "BACKUP_DECRYPTION_KEYS", "list", option="decryption_keys", secret=True,
            group=ENCRYPTION, meaning="older master keys still accepted"),
    Setting("keyring_file", "BACKUP_KEYRING_FILE", "path", option="keyring_file", group=ENCRYPTION,
            meaning="a file of more older master keys"),
    Setting("encryption", "BACKUP_ENCRYPTION", "choice", DEFAULT_ENCRYPTION, option="encryption", group=ENCRYPTION,
            choices=ENCRYPTIONS, problem="is not supported", meaning="how new backups are encrypted"),
    Setting("recipients", "BACKUP_RECIPIENTS", "list", option="recipients", group=ENCRYPTION,
            meaning="hybrid-pq public keys new backups are sealed to",
            hint="set it to the public key(s) printed by `quankey-backup keygen` on the restore side"),
    Setting("identity_file", "BACKUP_IDENTITY_FILE", "path", option="identity_file", group=ENCRYPTION,
            meaning="the hybrid-pq private key file",
            hint="point it at the private key file made by `quankey-backup keygen` (mode 0600)"),
    Setting("signing_key", "BACKUP_SIGNING_KEY", option="signing_key", secret=True, group=ENCRYPTION,
            shown="derived from `BACKUP_ENCRYPTION_KEY`", meaning="signs each backup's metadata",
            hint="generate one with `openssl rand -base64 32` and set it where backups are made and where they are "
                 "restored"),
    Setting("seed_passphrase", "BACKUP_SEED_PASSPHRASE", option="seed_passphrase", secret=True, group=ENCRYPTION,
            shown="the text of `BACKUP_ENCRYPTION_KEY`", meaning="the passphrase the seed's scripts gave openssl enc",
            hint="set it to the passphrase the seed's scripts gave openssl enc (their BACKUP_ENCRYPTION_KEY, as "
                 "written)"),
    Setting("seed_kdf", "BACKUP_SEED_KDF", option="seed_kdf", group=ENCRYPTION, check=_seed_kdf,
            shown="found by trying", meaning="how the seed's key was derived"),
    # Options of some modules only
    Setting("storage_class", "S3_STORAGE_CLASS", "choice", DEFAULT_STORAGE_CLASS, option="storage_class",
            group=MODULE, choices=STORAGE_CLASSES, problem="is not an S3 storage class",
            meaning="S3 storage class of new objects"),
    Setting("object_lock_mode", "BACKUP_OBJECT_LOCK_MODE", "choice", option="object_lock_mode", group=MODULE,
            choices=LOCK_MODES, problem="is not an S3 Object Lock mode", shown="off",
            meaning="lock every object of a new backup (S3 Object Lock) in this mode"),
    Setting("object_lock_days", "BACKUP_OBJECT_LOCK_DAYS", "int", option="object_lock_days", group=MODULE,
            bounds=(1, 36500), meaning="days each object of a new backup stays locked",
            hint="give the days each object of a new backup stays locked, 1 to 36500 (e.g. as many as "
                 "BACKUP_RETENTION_DAYS)"),
    Setting("compression", "BACKUP_COMPRESSION", "choice", DEFAULT_COMPRESSION, option="compression", group=MODULE,
            choices=COMPRESSIONS, problem="is not supported", meaning="how dumps are compressed"),
    Setting("backup_name", "BACKUP_NAME", option="name", group=MODULE, check=_matching(_NAME_RE, _KEY_PART),
            shown="`DB_NAME`", meaning="name stem of new backups"),
    Setting("retention_days", "BACKUP_RETENTION_DAYS", "int", 30, option="retention_days", group=MODULE,
            bounds=(1, 36500), meaning="days a backup is kept"),
    Setting("keep_daily", "BACKUP_KEEP_DAILY", "int", 0, option="keep_daily", group=MODULE, bounds=(0, 100000),
            meaning="prune also keeps the newest good backup of each of this many most recent days (UTC) that have one",
            hint=_keep_hint("days")),
    Setting("keep_weekly", "BACKUP_KEEP_WEEKLY", "int", 0, option="keep_weekly", group=MODULE, bounds=(0, 100000),
            meaning="prune also keeps the newest good backup of each of this many most recent ISO weeks",
            hint=_keep_hint("ISO weeks")),
    Setting("keep_monthly", "BACKUP_KEEP_MONTHLY", "int", 0, option="keep_monthly", group=MODULE, bounds=(0, 100000),
            meaning="prune also keeps the newest good backup of each of this many most recent months",
            hint=_keep_hint("months")),
    Setting("keep_yearly", "BACKUP_KEEP_YEARLY", "int", 0, option="keep_yearly", group=MODULE, bounds=(0, 100000),
            meaning="prune also keeps the newest good backup of each of this many most recent years",
            hint=_keep_hint("years")),
    Setting("allow_seed", "BACKUP_ALLOW_SEED", "bool", False, option="allow_seed", group=MODULE,
            meaning="also use the seed's unsigned backups"),
    Setting("globals", "BACKUP_GLOBALS", "bool", True, option="globals", group=MODULE,
            meaning="each backup also keeps the roles, memberships and settings its database needs"),
    Setting("schedule", "BACKUP_SCHEDULE", default="daily", option="schedule", group=MODULE,
            meaning="how often backups are meant to run (checked by health)"),
    Setting("count_rows", "BACKUP_COUNT_ROWS", "bool", False, option="count_rows", group=MODULE,
            meaning="each backup records the exact row count of every table, counted in the snapshot pg_dump dumps (a "
                    "full scan of every table); restore drills check them"),
    # Variables only (the env file or the environment)
    Setting("min_keep", "BACKUP_MIN_KEEP", "int", 3, bounds=(1, 100000), meaning="backups prune always keeps"),
    Setting("lock_wait_timeout", "BACKUP_LOCK_WAIT_TIMEOUT", "int", DEFAULT_LOCK_WAIT_TIMEOUT, bounds=(1, 86400),
            meaning="seconds pg_dump waits for a table's lock"),
    Setting("retry_window", "S3_RETRY_WINDOW_SECONDS", "int", DEFAULT_RETRY_WINDOW, bounds=(0, 86400),
            meaning="seconds a failing S3 request is retried",
            hint="give the seconds a failing S3 request is retried, 0 for no retries", example=str(DEFAULT_RETRY_WINDOW)),
    Setting("max_attempts", "AWS_MAX_ATTEMPTS", "int", bounds=(1, 100), shown="the profile's or 1",
            meaning="botocore's attempts of each S3 request"),
    Setting("retry_mode", "AWS_RETRY_MODE", "choice", choices=RETRY_MODES, problem="is not a botocore retry mode",
            shown="the profile's or standard", meaning="botocore's retry mode"),
    Setting("restore_tier", "S3_RESTORE_TIER", "choice", "Standard", choices=("Standard", "Bulk", "Expedited"),
            problem="is not an S3 restore tier", meaning="tier of the S3 restore request of an archived backup"),
    Setting("restore_days", "S3_RESTORE_DAYS", "int", 7, bounds=(1, 365),
            meaning="days an archived backup's restored copy stays readable"),
    # Restore drills (workflows/drill.py)
    Setting("drill_assertions", "DRILL_ASSERTIONS", "list", check=_sql_assertions,
            meaning="SQL a restore drill runs in the restored database as the restore role, a JSON list of strings; "
                    "each must return one row whose first column is true"),
    Setting("drill_max_age_days", "DRILL_MAX_AGE_DAYS", "int", bounds=(1, 3650), shown="35",
            meaning="health warns when the last passed restore drill is older (checked once a drill report exists, or "
                    "when this is set)"),
    # WAL archiving (wal-push, wal-fetch: variables only)
    Setting("wal_prefetch", "WAL_PREFETCH", "int", 4, bounds=(0, 64),
            meaning="segments wal-fetch fetches ahead, at the same time as the one asked for (0: none)",
            hint="give how many WAL segments wal-fetch fetches ahead, 0 to 64"),
    Setting("wal_push_ahead", "WAL_PUSH_AHEAD", "int", 4, bounds=(0, 64),
            meaning="segments PostgreSQL marked ready that wal-push pushes ahead, at the same time (0: none)",
            hint="give how many ready WAL segments wal-push pushes ahead, 0 to 64"),
    Setting("wal_spool_dir", "WAL_SPOOL_DIR", "path", shown="pg_wal/.quankey-prefetch",
            meaning="where wal-fetch keeps the segments it fetched ahead (verified plaintext, a 0700 directory)"),
    Setting("backup_kind", "BACKUP_KIND", "choice", "logical", choices=BACKUP_KINDS, problem="is not a backup kind",
            meaning="what this host's schedule makes (the pg_backup role's pg_backup_kind): logical (dumps), "
                    "physical (base backups and archived WAL, no dumps: health's dump rules do not apply, its wal "
                    "and base rules do) or both"),
    Setting("wal_archiving", "WAL_ARCHIVING", "bool", False,
            meaning="this host archives its WAL with wal-push (archive_command): health checks it (the wal rule: "
                    "pg_stat_archiver's failures and the newest archived segment's age)"),
    Setting("wal_max_lag_minutes", "WAL_MAX_LAG_MINUTES", "int", 60, bounds=(1, 10080),
            meaning="health warns when the newest archived WAL segment is older (the RPO achieved; set "
                    "archive_timeout below it so that a quiet server still archives)",
            hint="give the minutes the newest archived WAL segment may be old, 1 to 10080"),
    Setting("base_max_age_days", "BASE_MAX_AGE_DAYS", "int", 8, bounds=(1, 3650),
            meaning="with WAL_ARCHIVING, health warns when the newest base backup is older (a point-in-time recovery "
                    "replays all WAL since it, and prune keeps all that WAL)",
            hint="give the days the newest base backup may be old, 1 to 3650"),
    # The replica: a second bucket each committed backup is copied to (variables only; unset ones: the primary's)
    Setting("replica_bucket", "S3_REPLICA_BUCKET", shown="none: no replica",
            meaning="a second bucket each committed backup is copied to and verified in (restore falls back to it)"),
    Setting("replica_endpoint_url", "S3_REPLICA_ENDPOINT_URL", shown="S3_ENDPOINT_URL's",
            meaning="the replica's S3-compatible endpoint"),
    Setting("replica_region", "S3_REPLICA_REGION", shown="the primary's region", meaning="the replica bucket's region"),
    Setting("replica_access_key", "S3_REPLICA_ACCESS_KEY_ID", shown="the primary's credentials",
            meaning="access key id of the replica's credentials (with S3_REPLICA_SECRET_ACCESS_KEY)"),
    Setting("replica_secret_key", "S3_REPLICA_SECRET_ACCESS_KEY", secret=True, shown="the primary's credentials",
            meaning="secret access key of the replica's credentials"),
    Setting("replica_prune", "S3_REPLICA_PRUNE", "bool", False,
            meaning="prune also prunes the replica, by the same rules on the replica's own listing"),
    # The host command's own
    Setting("backup_file", "BACKUP_FILE", group=COMMAND, meaning="the backup restore and verify use (--backup)"),
    Setting("output_json", "OUTPUT_JSON", "bool", False, group=COMMAND, meaning="health prints JSON (--json)"),
    Setting("metrics_dir", "BACKUP_METRICS_DIR", "path", group=COMMAND, shown="none: not recorded",
            meaning="where backup, prune, drill and replicate record their last run (node_exporter textfile and JSON; "
                    "docs/MONITORING.md)"),
)

SETTINGS = dict((setting.field, setting) for setting in TABLE)
_STORED = tuple(setting for setting in TABLE if setting.stored)
FIELDS = tuple(setting.field for setting in _STORED)
# Each setting's variable; messages name it (or the module option it came from, see Settings.label).
FIELD_VARIABLES = dict((setting.field, setting.variable) for setting in TABLE)
# Every variable the engine reads (READ_VARIABLES: with the older names read after them); the secret ones are
# never logged or returned.
VARIABLES = tuple(setting.variable for setting in TABLE)
READ_VARIABLES = tuple(name for setting in TABLE for name in setting.variables)
SECRET_VARIABLES = tuple(name for setting in TABLE if setting.secret for name in setting.variables)

# The process variables: what an env file may set for the engine's own process, beside the settings and libpq's
# pass-through (is_pg_passthrough). Each one an env file holds is put into the process environment unless that
# sets it already (the environment wins, as for the settings: use_env_file), before any S3 client is made. botocore
# reads them from os.environ: the proxies through urllib's getproxies and proxy_bypass (HTTP_PROXY for an http://
# endpoint, HTTPS_PROXY for https://; the lower-case forms win over the upper-case ones), requests' CA bundle (read
# when AWS_CA_BUNDLE, a setting, is not set), the shared config and credentials files, web identity, STS, FIPS and
# the instance metadata switch; TZ reaches the client programs (adapters/postgres.py child_environment). A name the
# table reads is a setting (AWS_CA_BUNDLE, AWS_PROFILE, AWS_MAX_ATTEMPTS...), so it is left out here.
PROXY_VARIABLES = ("HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "https_proxy", "http_proxy", "no_proxy")
PROCESS_VARIABLES = tuple(name for name in PROXY_VARIABLES + (
    "REQUESTS_CA_BUNDLE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_SESSION_NAME", "AWS_STS_REGIONAL_ENDPOINTS",
    "AWS_USE_FIPS_ENDPOINT", "AWS_EC2_METADATA_DISABLED", "TZ") if name not in READ_VARIABLES)
# Variables people set expecting an effect this engine does not give them, and what to set instead. (botocore
# verifies with its own CA bundle, not OpenSSL's SSL_CERT_FILE.)
NO_EFFECT = {
    "SSL_CERT_FILE": "boto3 does not read it: use AWS_CA_BUNDLE",
    "AWS_ENDPOINT_URL": "use S3_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3": "use S3_ENDPOINT_URL",
    "PGHOST": "use DB_HOST",
    "PGPORT": "use DB_PORT",
    "PGUSER": "use DB_USER",
    "PGDATABASE": "use DB_NAME",
}

# How the host command says its switches; a module says its options instead (ansible_common.py).
COMMAND_FLAGS = {
    "backup": "--backup", "target_db": "--target-db", "force": "--force", "no_owner": "--no-owner",
    "as_admin": "--as-admin", "allow_unsigned": "--allow-unsigned", "allow_seed": "--allow-seed",
    "env_file": "--env-file", "all": "--all",
}


class Vocabulary:
    """How a caller names settings and switches in messages.

    The host command (``options=False``) names the variable (``DB_PORT``) and its flags
    (``--force``); a module names its option (``the login_port option``, ``force: true``), or the
    variable for a setting that has no option.
    """

    def __init__(self, options=False, flags=None):
        self.options = options
        self.flags = dict(COMMAND_FLAGS if flags is None else flags)

    def name(self, field):
        """A setting that is not set, or set where it was expected: 'DB_PORT' or 'the login_port option'."""
        setting = SETTINGS.get(field)
        if setting is None:
            return field
        if self.options and setting.option:
            return "the %s option" % setting.option
        return setting.variable

    def example(self, field, value):
        """How to set ``field`` to ``value``: 'DB_NAME=quankey_prod' or 'db: quankey_prod'."""
        setting = SETTINGS[field]
        if not self.options:
            return "%s=%s" % (setting.variable, value)
        if setting.option:
            return "%s: %s, or %s=%s in the env file" % (setting.option, value, setting.variable, value)
        return "%s=%s in the env file" % (setting.variable, value)

    def flag(self, name):
        """A switch: '--force' or 'force: true'."""
        return self.flags.get(name, name)


HOST_COMMAND = Vocabulary()


class Settings:
    """Everything one backup, restore, listing or health check needs to know (the fields of :data:`TABLE`).

    Keyword arguments only: the fields (unset ones take the table's default; an unknown one is a
    TypeError), and ``source`` (where they came from, for logs), ``labels`` (field -> how the user
    set it, for messages: 'PGPASSWORD in /etc/quankey/backup.env', 'the login_password option'),
    ``vocabulary`` (how to name what was not set; default the host command's variables) and
    ``pg_passthrough`` (the user's libpq variables for the client programs, PGSSL*, PGSERVICE*,
    PGSYSCONFDIR).

    Secrets (``db_password``, ``secret_key``, ``session_token``, ``encryption_key``,
    ``decryption_keys``, ``signing_key``, ``seed_passphrase``, ``replica_secret_key``) are kept out of ``repr`` and
    :meth:`describe`. ``encryption_key`` is the active key; ``decryption_keys`` (a string of keys
    or a list) and the file ``keyring_file`` hold older keys still accepted to open backups
    (keys.py). ``recipients`` (public keys) and ``identity_file`` (their private keys) serve
    ``encryption="hybrid-pq"``; ``signing_key`` signs metadata (signing.py).
    """

    def __init__(self, **values):
        self.source = values.pop("source", "settings")
        self._labels = dict(values.pop("labels", None) or {})
        self._vocabulary = values.pop("vocabulary", None) or HOST_COMMAND
        self.pg_passthrough = dict(values.pop("pg_passthrough", None) or {})
        unknown = sorted(set(values) - set(FIELDS))
        if unknown:
            raise TypeError("Settings() got unknown settings: %s (the table in config.py has %s)"
                            % (", ".join(unknown), ", ".join(FIELDS)))
        for setting in _STORED:
            value = values.get(setting.field)
            setattr(self, setting.field, setting.default if _unset(value) else value)
        self.validate()

    def __repr__(self):
        return "Settings(%s)" % ", ".join("%s=%r" % item for item in sorted(self.describe().items()))

    @property
    def name(self):
        """The backup name stem: BACKUP_NAME, else the database name."""
        return self.backup_name or self.db_name

    @property
    def host(self):
        """This host's id in object keys: BACKUP_HOST_ID, else the short host name."""
        return self.host_id or default_host_id()

    @property
    def archives_wal(self):
        """Whether this host archives its WAL and takes base backups: WAL_ARCHIVING, or BACKUP_KIND physical or both."""
        return bool(self.wal_archiving) or self.backup_kind in ("physical", "both")

    @property
    def makes_dumps(self):
        """Whether this host's schedule makes dumps (BACKUP_KIND logical or both; physical: none)."""
        return self.backup_kind != "physical"

    def describe(self):
        """The settings without secrets, for logs and module results."""
        view = dict((setting.field, getattr(self, setting.field)) for setting in _STORED if not setting.secret)
        view.update(name=self.name, host=self.host)
        return view

    def validate(self):
        """Check every value that can be checked without a network; raise ConfigError naming the setting."""
        for setting in _STORED:
            value = getattr(self, setting.field)
            if value is not None:
                setattr(self, setting.field, setting.validate(self.label(setting.field), value))
        keys = [field for field in ("access_key", "secret_key", "session_token") if getattr(self, field)]
        if self.profile and keys:  # as amazon.aws's modules: a profile brings its own credentials
            raise ConfigError("%s is set together with %s: a profile brings its own credentials, so set the profile or "
                              "the keys, not both" % (self.label("profile"), " and ".join(self.label(key) for key in keys)))
        if bool(self.replica_access_key) != bool(self.replica_secret_key):
            given, missing = (("replica_access_key", "replica_secret_key") if self.replica_access_key
                              else ("replica_secret_key", "replica_access_key"))
            raise ConfigError("%s is set but %s is not: the replica's credentials are both keys (or neither, for the "
                              "primary's)" % (self.label(given), self.label(missing)))
        for name in self.pg_passthrough:
            if not is_pg_passthrough(name):
                raise ConfigError("%s is not a libpq variable passed to the PostgreSQL client programs: only %s* and %s "
                                  "are" % (name, "*, ".join(PG_PASSTHROUGH_PREFIXES), ", ".join(PG_PASSTHROUGH_NAMES)))

    def label(self, field):
        """How the user set ``field``, for messages: 'PGPASSWORD in /etc/quankey/backup.env' or 'the login_password option'."""
        if field in self._labels:
            return self._labels[field]
        return self._vocabulary.name(field)

    def flag(self, name):
        """How the caller says a switch of its own (COMMAND_FLAGS' names): '--force' or 'force: true'."""
        return self._vocabulary.flag(name)

    def require(self, *fields):
        """Raise ConfigError for the first of ``fields`` (attribute names) that is not set."""
        for field in fields:
            if getattr(self, field) in (None, ""):
                setting = SETTINGS.get(field)
                hint = (setting.hint if setting is not None else None) or "set it"
                if setting is not None and setting.example is not None:
                    hint += " (e.g. %s)" % self._vocabulary.example(field, setting.example)
                raise ConfigError("%s is not set: %s" % (self.label(field), hint))

    def pg_environment(self):
        """libpq environment for the client programs (the password travels here, never in argv): the password, the
        sslmode and the TLS files (:data:`PG_SETTING_VARIABLES`), which win over the user's pass-through variables."""
        env = {"PGCONNECT_TIMEOUT": "10", "PGAPPNAME": "quankey-backup"}
        if self.db_password:
            env["PGPASSWORD"] = self.db_password
        for field, name in PG_SETTING_VARIABLES:
            if getattr(self, field):
                env[name] = getattr(self, field)
        return env

    def pg_user_environment(self):
        """The user's own libpq variables for the client programs (TLS, service files): PGSSL*, PGSERVICE*, PGSYSCONFDIR."""
        return dict(self.pg_passthrough)


def _unset(value):
    return value is None or value == "" or (isinstance(value, (list, tuple)) and not value)


def settings_from_sources(sources, labels=None, **extra):
    """:class:`Settings` from ``sources``, the first that sets a field winning (then the table's default).

    Each source is a function ``find(setting)`` returning ``(value, label)`` or None: see
    :func:`variables_source`; ansible_common.py adds the module's options first. ``labels``: how to
    name the fields no source sets (default: the vocabulary's words). ``extra``: the other keyword
    arguments of Settings (``source``, ``vocabulary``, ``pg_passthrough``).
    """
    values, labels = {}, dict(labels or {})
    for setting in _STORED:
        for find in sources:
            found = find(setting)
            if found is not None:
                values[setting.field], labels[setting.field] = found
                break
    return Settings(labels=labels, **dict(extra, **values))


def variables_source(env, where=None, from_where=None):
    """A source of :func:`settings_from_sources`: the variables of ``env`` that are set (not empty).

    Each setting's variable, then its alternatives; labelled 'DB_PORT in <where>' when ``where`` is
    given and the variable is among ``from_where`` (None: all), else 'DB_PORT'.
    """
    def find(setting):
        for name in setting.variables:
            value = env.get(name)
            if not _unset(value):
                if where and (from_where is None or name in from_where):
                    return value, "%s in %s" % (name, where)
                return value, name
        return None
    return find


def pg_passthrough_of(env):
    """The libpq pass-through variables (PGSSL*, PGSERVICE*, PGSYSCONFDIR) of ``env`` that are set."""
    return dict((name, value) for name, value in env.items() if is_pg_passthrough(name) and not _unset(value))


def settings_from_env(env, origin=None, from_origin=None):
    """Build :class:`Settings` from a mapping of the seed's variable names.

    ``origin``: the env file the values came from; ``from_origin``: the names that did (default: all),
    so a message names "DB_PORT in /etc/quankey/backup.env" only for what that file set.
    """
    found = variables_source(env, origin, None if from_origin is None else set(from_origin))
    where = dict((setting.field, "%s in %s" % (setting.variable, origin)) for setting in _STORED) if (
        origin and from_origin is None) else None  # all from that file: what is missing belongs there too
    return settings_from_sources([found], labels=where, source="environment", pg_passthrough=pg_passthrough_of(env))


def normalize_prefix(prefix):
    """'' stays ''; 'a/b' and '/a/b/' become 'a/b/'."""
    prefix = (prefix or "").strip().strip("/")
    return prefix + "/" if prefix else ""


def default_host_id():
    """The short host name, made safe for S3 keys."""
    name = socket.gethostname().split(".")[0] or "localhost"
    return re.sub(r"[^A-Za-z0-9._-]", "-", name)


def is_pg_passthrough(name):
    """Whether a variable is one of the user's libpq settings that reach the client programs."""
    return name.startswith(PG_PASSTHROUGH_PREFIXES) or name in PG_PASSTHROUGH_NAMES


def variable_use(name):
    """What the engine does with a variable of an env file: 'setting' (a row of :data:`TABLE` reads it), 'libpq'
    (passed to the client programs, :func:`is_pg_passthrough`), 'process' (:data:`PROCESS_VARIABLES`), or None."""
    if name in READ_VARIABLES:
        return "setting"
    if is_pg_passthrough(name):
        return "libpq"
    if name in PROCESS_VARIABLES:
        return "process"
    return None


def accepted_variables():
    """In words, what :func:`variable_use` accepts, for messages."""
    return ("the settings of docs/CLI.md, libpq's %s* and %s, and the process variables %s"
            % ("*, ".join(PG_PASSTHROUGH_PREFIXES), ", ".join(PG_PASSTHROUGH_NAMES), ", ".join(PROCESS_VARIABLES)))


def unused_variable_warning(name, path):
    """The warning for a variable of the env file ``path`` that the engine does not use (never its value)."""
    hint = NO_EFFECT.get(name) or "remove it; docs/CLI.md says which variables an env file may set"
    return "%s in %s is not a variable quankey-backup reads: it has no effect (%s)" % (name, path, hint)


def _set_in(environ, name):
    """Whether ``environ`` sets ``name`` (not empty); a proxy variable in either case (urllib reads both)."""
    names = (name.upper(), name.lower()) if name in PROXY_VARIABLES else (name,)
    return any(not _unset(environ.get(each)) for each in names)


def export_process_variables(values, environ=None):
    """Put each process variable of ``values`` (an env file's) into ``environ`` (default ``os.environ``), unless
    ``environ`` sets it already: the process environment wins, as for the settings. Returns the names put."""
    environ = os.environ if environ is None else environ
    put = []
    for name in PROCESS_VARIABLES:
        if not _unset(values.get(name)) and not _set_in(environ, name):
            environ[name] = values[name]
            put.append(name)
    return put


def process_secrets(values):
    """The secrets the process variables of ``values`` may hold (a proxy URL's password), for masking."""
    found = []
    for name in PROXY_VARIABLES:
        try:
            password = urlsplit(values.get(name) or "").password
        except ValueError:  # not a URL urllib can split (no password to find in it)
            password = None
        if password:
            found.append(password)
    return found


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


def _boolean(label, value):
    """A yes/no setting: a bool, or true/false, yes/no, on/off, 1/0 (any case)."""
    if isinstance(value, bool):
        return value
    text = str(value if value is not None else "").strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigError("%s must be true or false, got %r" % (label, value))


def _mapping(label, value):
    """A dict setting: a dict (a module's option), or the text of a JSON object (a variable)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise ConfigError("%s is not valid JSON (%s): write a JSON object, e.g. %s"
                              % (label, exc, '{"retries": {"max_attempts": 10, "mode": "adaptive"}}'))
    if not isinstance(value, dict):
        raise ConfigError("%s must be a mapping of names to values (a JSON object), got %s"
                          % (label, type(value).__name__))
    return value


def _whole_number(variable, value, minimum, maximum, hint=None):
    """``value`` as an int within the bounds, or ConfigError naming ``variable`` (and saying what to give: ``hint``)."""
    fix = ": %s" % hint if hint else ""
    try:
        number = int(str(value).strip())
    except (TypeError, ValueError):
        raise ConfigError("%s must be a whole number, got %r%s" % (variable, value, fix))
    if not minimum <= number <= maximum:
        raise ConfigError("%s must be between %d and %d, got %d%s" % (variable, minimum, maximum, number, fix))
    return number


def _shell_value(raw):
    """A value as the shell would read it: 'single', "double" (with \\ escapes), \\x, and a trailing ' # comment'.

    Raises ValueError (without the value: it may be a secret) for what the shell would not take as one word.
    """
    out = []
    index, size = 0, len(raw)
    while index < size:
        char = raw[index]
        if char == "'":
            end = raw.find("'", index + 1)
            if end < 0:
                raise ValueError("an unterminated single quote")
            out.append(raw[index + 1:end])
            index = end + 1
        elif char == '"':
            index += 1
            while index < size and raw[index] != '"':
                if raw[index] == "\\" and index + 1 < size and raw[index + 1] in '"\\$`':
                    index += 1
                out.append(raw[index])
                index += 1
            if index >= size:
                raise ValueError("an unterminated double quote")
            index += 1
        elif char == "\\" and index + 1 < size:
            out.append(raw[index + 1])
            index += 2
        elif char.isspace():
            rest = raw[index:].strip()
            if rest and not rest.startswith("#"):
                raise ValueError("an unquoted space (quote the value)")
            break
        else:
            out.append(char)
            index += 1
    return "".join(out)


def parse_env_text(text, origin="env file"):
    """Parse KEY=VALUE lines (``export`` allowed, '#' comments, single or double quotes)."""
    values = {}
    if text.startswith("\ufeff"):
        text = text[1:]  # a byte-order mark some editors put first: not part of the first name
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _ENV_LINE_RE.match(line)
        if not match:
            raise ConfigError("%s line %d is not KEY=VALUE: fix or remove that line" % (origin, number))
        try:
            values[match.group(1)] = _shell_value(match.group(2))
        except ValueError as exc:
            raise ConfigError("%s line %d (%s) has %s: fix that line" % (origin, number, match.group(1), exc))
    return values


def read_env_file(path, flag="--env-file"):
    """Read an env file; returns (values, warnings). A group/world-readable file is a warning, and so is each
    variable the engine does not use (:func:`variable_use`), by name.

    ``flag``: how the caller names the option that chooses the file, for the message when it is missing.
    """
    warnings = []
    try:
        info = os.stat(path)
        with open(path, "r") as handle:
            text = handle.read()
    except FileNotFoundError:
        raise ConfigError("env file %s does not exist: create it (mode 0600) with the backup settings, "
                          "or pass %s" % (path, flag))
    except PermissionError:
        raise ConfigError("cannot read env file %s (permission denied): run as the backup user or root" % path)
    except IsADirectoryError:
        raise ConfigError("env file %s is a directory: name the file (mode 0600) with the backup settings" % path)
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        warnings.append("env file %s is mode %04o and holds secrets: chmod 0600 %s"
                        % (path, stat.S_IMODE(info.st_mode), path))
    values = parse_env_text(text, origin=path)
    warnings.extend(unused_variable_warning(name, path) for name in values if variable_use(name) is None)
    return values, warnings


def use_env_file(path, environ=None, flag="--env-file"):
    """Read the env file of a run (:func:`read_env_file`: ``(values, warnings)``) and put its process variables into
    ``environ`` (default ``os.environ``) where it does not set them (:func:`export_process_variables`).

    The host command (cli.py) and the modules' ``env_file`` (ansible_common.py) both read their file here, once per
    run and before any S3 client is made, so boto3 sees what the file says.
    """
    values, warnings = read_env_file(path, flag)
    export_process_variables(values, environ)
    return values, warnings


def env_file_path(given, environ):
    """The env file to read: ``given`` (--env-file, the env_file option), else $QUANKEY_ENV_FILE, else the
    default when it exists, else None."""
    path = given or environ.get(ENV_FILE_VARIABLE)
    if not path and os.path.exists(DEFAULT_ENV_FILE):
        path = DEFAULT_ENV_FILE
    return path or None
