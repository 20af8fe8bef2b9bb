# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Settings of the engine, read from the seed's environment variables.

The host command reads them from the process environment and an env file
(``/etc/quankey/backup.env``); the modules build the same :class:`Settings`
from their options. Validation lives here once, for both.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import re
import socket
import stat

from .errors import ConfigError
from .formats import modes, openssl_enc
from .formats.compression import COMPRESSIONS

DEFAULT_ENV_FILE = "/etc/quankey/backup.env"

STORAGE_CLASSES = (
    "STANDARD", "STANDARD_IA", "ONEZONE_IA", "INTELLIGENT_TIERING", "GLACIER_IR",
    "REDUCED_REDUNDANCY", "GLACIER", "DEEP_ARCHIVE",
)
DEFAULT_STORAGE_CLASS = "STANDARD_IA"
# The encryption modes (formats/modes.py: one registry, described in docs/FORMAT.md).
ENCRYPTIONS = modes.NAMES
DEFAULT_ENCRYPTION = modes.DEFAULT
# The plain role a restored archive's SQL runs as unless a restore is explicitly run as DB_USER (--as-admin).
DEFAULT_RESTORE_ROLE = "quankey_restore"
# Seconds a failing S3 request is retried (connection lost, timeout, 5xx, throttling) before the command gives up.
DEFAULT_RETRY_WINDOW = 300
# Seconds pg_dump waits for a table's lock (held by a migration's ALTER TABLE, say) before the backup fails.
DEFAULT_LOCK_WAIT_TIMEOUT = 300
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")

_HOST_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_ROLE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
# libpq variables a user may set for the client programs (TLS files, service files): passed through to them,
# from the environment and from the env file. Every other PG* variable is replaced by what the settings say.
PG_PASSTHROUGH_PREFIXES = ("PGSSL", "PGSERVICE")
PG_PASSTHROUGH_NAMES = ("PGSYSCONFDIR",)
_ENV_LINE_RE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$")

# Every variable the engine reads; the secret ones are never logged or returned.
VARIABLES = (
    "DB_HOST", "DB_PORT", "DB_NAME", "DB_USER", "PGPASSWORD", "DB_SSLMODE", "DB_MAINTENANCE_DB", "PG_BIN_DIR",
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION",
    "S3_BUCKET", "S3_PREFIX", "S3_ENDPOINT_URL", "S3_STORAGE_CLASS",
    "BACKUP_ENCRYPTION_KEY", "BACKUP_DECRYPTION_KEYS", "BACKUP_KEYRING_FILE", "BACKUP_ENCRYPTION", "BACKUP_COMPRESSION",
    "BACKUP_RECIPIENTS", "BACKUP_IDENTITY_FILE", "BACKUP_SIGNING_KEY",
    "BACKUP_NAME", "BACKUP_HOST_ID", "BACKUP_RETENTION_DAYS", "BACKUP_MIN_KEEP",
    "BACKUP_RESTORE_ROLE", "BACKUP_ALLOW_SEED", "BACKUP_SEED_PASSPHRASE", "BACKUP_SEED_KDF",
    "S3_RETRY_WINDOW_SECONDS", "BACKUP_LOCK_WAIT_TIMEOUT",
)
SECRET_VARIABLES = ("PGPASSWORD", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "BACKUP_ENCRYPTION_KEY",
                    "BACKUP_DECRYPTION_KEYS", "BACKUP_SIGNING_KEY", "BACKUP_SEED_PASSPHRASE")


class Settings:
    """Everything one backup, restore, listing or health check needs to know.

    Secrets (``db_password``, ``secret_key``, ``session_token``, ``encryption_key``,
    ``decryption_keys``, ``signing_key``) are kept out of ``repr`` and :meth:`describe`.
    ``encryption_key`` is the active key; ``decryption_keys`` (a string of keys or a list)
    and the file ``keyring_file`` hold older keys still accepted to open backups (keys.py).
    ``recipients`` (public keys) and ``identity_file`` (their private keys) serve
    ``encryption="hybrid-pq"``; ``signing_key`` signs metadata (signing.py).
    """

    def __init__(self, db_name=None, db_host="localhost", db_port=5432, db_user="postgres", db_password=None,
                 db_sslmode=None, db_maintenance_db="postgres", pg_bin_dir=None,
                 bucket=None, prefix="", region=None, endpoint_url=None, access_key=None, secret_key=None,
                 session_token=None, storage_class=DEFAULT_STORAGE_CLASS,
                 encryption_key=None, encryption=DEFAULT_ENCRYPTION, compression="zstd",
                 backup_name=None, host_id=None, retention_days=30, min_keep=3, source="settings", labels=None,
                 decryption_keys=None, keyring_file=None, recipients=None, identity_file=None, signing_key=None,
                 restore_role=DEFAULT_RESTORE_ROLE, allow_seed=False, pg_passthrough=None, seed_passphrase=None,
                 seed_kdf=None, retry_window=DEFAULT_RETRY_WINDOW, lock_wait_timeout=DEFAULT_LOCK_WAIT_TIMEOUT):
        self.db_name = db_name
        self.db_host = db_host or "localhost"
        self.db_port = db_port
        self.db_user = db_user or "postgres"
        self.db_password = db_password
        self.db_sslmode = db_sslmode or None
        self.db_maintenance_db = db_maintenance_db or "postgres"
        self.pg_bin_dir = pg_bin_dir or None
        self.bucket = bucket
        self.prefix = normalize_prefix(prefix)
        self.region = region or None
        self.endpoint_url = endpoint_url or None
        self.access_key = access_key or None
        self.secret_key = secret_key or None
        self.session_token = session_token or None
        self.storage_class = storage_class or DEFAULT_STORAGE_CLASS
        self.encryption_key = encryption_key
        self.decryption_keys = decryption_keys or None
        self.keyring_file = keyring_file or None
        self.recipients = recipients or None
        self.identity_file = identity_file or None
        self.signing_key = signing_key or None
        self.restore_role = restore_role or DEFAULT_RESTORE_ROLE
        self.allow_seed = allow_seed
        self.pg_passthrough = dict(pg_passthrough or {})
        self.retry_window = retry_window
        self.lock_wait_timeout = lock_wait_timeout
        self.seed_passphrase = seed_passphrase or None
        self.seed_kdf = seed_kdf or None
        self.encryption = encryption or DEFAULT_ENCRYPTION
        self.compression = compression or "zstd"
        self.backup_name = backup_name or None
        self.host_id = host_id or None
        self.retention_days = retention_days
        self.min_keep = min_keep
        self.source = source
        self._labels = dict(labels or {})
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

    def describe(self):
        """The settings without secrets, for logs and module results."""
        return {
            "db_host": self.db_host, "db_port": self.db_port, "db_name": self.db_name, "db_user": self.db_user,
            "bucket": self.bucket, "prefix": self.prefix, "region": self.region, "endpoint_url": self.endpoint_url,
            "storage_class": self.storage_class, "encryption": self.encryption, "compression": self.compression,
            "name": self.name, "host": self.host, "retention_days": self.retention_days, "min_keep": self.min_keep,
            "restore_role": self.restore_role, "allow_seed": self.allow_seed, "retry_window": self.retry_window,
        }

    def validate(self):
        """Check every value that can be checked without a network; raise ConfigError naming the setting."""
        self.db_port = _whole_number(self.label("db_port"), self.db_port, 1, 65535)
        self.retention_days = _whole_number(self.label("retention_days"), self.retention_days, 1, 36500)
        self.min_keep = _whole_number(self.label("min_keep"), self.min_keep, 1, 100000)
        if self.storage_class not in STORAGE_CLASSES:
            raise ConfigError("%s %r is not an S3 storage class: choose one of %s"
                              % (self.label("storage_class"), self.storage_class, ", ".join(STORAGE_CLASSES)))
        if self.encryption not in ENCRYPTIONS:
            raise ConfigError("%s %r is not supported: choose one of %s"
                              % (self.label("encryption"), self.encryption, ", ".join(ENCRYPTIONS)))
        if self.compression not in COMPRESSIONS:
            raise ConfigError("%s %r is not supported: choose one of %s"
                              % (self.label("compression"), self.compression, ", ".join(COMPRESSIONS)))
        if self.db_sslmode and self.db_sslmode not in SSL_MODES:
            raise ConfigError("%s %r is not a libpq sslmode: choose one of %s"
                              % (self.label("db_sslmode"), self.db_sslmode, ", ".join(SSL_MODES)))
        if self.host_id and not _HOST_ID_RE.match(self.host_id):
            raise ConfigError("%s %r may hold only letters, digits, '.', '_' and '-' (it becomes part of S3 keys)"
                              % (self.label("host_id"), self.host_id))
        if self.backup_name and not _NAME_RE.match(self.backup_name):
            raise ConfigError("%s %r may hold only letters, digits, '.', '_' and '-' (it becomes part of S3 keys)"
                              % (self.label("backup_name"), self.backup_name))
        self.allow_seed = _boolean(self.label("allow_seed"), self.allow_seed)
        self.lock_wait_timeout = _whole_number(self.label("lock_wait_timeout"), self.lock_wait_timeout, 1, 86400)
        self.retry_window = _whole_number(self.label("retry_window"), self.retry_window, 0, 86400)
        if not _ROLE_RE.match(self.restore_role):
            raise ConfigError("%s %r is not a usable role name: use letters, digits and '_' (at most 63, not starting "
                              "with a digit), e.g. quankey_restore" % (self.label("restore_role"), self.restore_role))
        if self.seed_kdf:
            self.seed_kdf = openssl_enc.parse_kdf(self.seed_kdf, self.label("seed_kdf")).spec()
        for name in self.pg_passthrough:
            if not is_pg_passthrough(name):
                raise ConfigError("%s is not a libpq variable passed to the PostgreSQL client programs: only %s* and %s "
                                  "are" % (name, "*, ".join(PG_PASSTHROUGH_PREFIXES), ", ".join(PG_PASSTHROUGH_NAMES)))
        if self.db_name is not None and ("/" in self.db_name or not self.db_name.strip()):
            raise ConfigError("DB_NAME %r is not usable in S3 keys: it may not be empty or contain '/'" % (self.db_name,))

    def label(self, field):
        """How the user set ``field``, for messages: 'PGPASSWORD in /etc/quankey/backup.env' or 'the login_password option'."""
        if field in self._labels:
            return self._labels[field]
        return FIELD_VARIABLES.get(field, field)

    def require(self, *fields):
        """Raise ConfigError for the first of ``fields`` (attribute names) that is not set."""
        for field in fields:
            if getattr(self, field) in (None, ""):
                hint = _FIELD_HINTS.get(field, "set it")
                raise ConfigError("%s is not set: %s" % (self.label(field), hint))

    def pg_environment(self):
        """libpq environment for the client programs (the password travels here, never in argv)."""
        env = {"PGCONNECT_TIMEOUT": "10", "PGAPPNAME": "quankey-backup"}
        if self.db_password:
            env["PGPASSWORD"] = self.db_password
        if self.db_sslmode:
            env["PGSSLMODE"] = self.db_sslmode
        return env

    def pg_user_environment(self):
        """The user's own libpq variables for the client programs (TLS, service files): PGSSL*, PGSERVICE*, PGSYSCONFDIR."""
        return dict(self.pg_passthrough)


# Each setting's variable; messages name it (or the module option it came from, see Settings.label).
FIELD_VARIABLES = {
    "db_name": "DB_NAME", "db_host": "DB_HOST", "db_port": "DB_PORT", "db_user": "DB_USER", "db_password": "PGPASSWORD",
    "db_sslmode": "DB_SSLMODE", "pg_bin_dir": "PG_BIN_DIR", "bucket": "S3_BUCKET", "prefix": "S3_PREFIX",
    "region": "AWS_DEFAULT_REGION", "endpoint_url": "S3_ENDPOINT_URL", "access_key": "AWS_ACCESS_KEY_ID",
    "secret_key": "AWS_SECRET_ACCESS_KEY", "session_token": "AWS_SESSION_TOKEN", "storage_class": "S3_STORAGE_CLASS",
    "encryption_key": "BACKUP_ENCRYPTION_KEY", "decryption_keys": "BACKUP_DECRYPTION_KEYS",
    "keyring_file": "BACKUP_KEYRING_FILE", "encryption": "BACKUP_ENCRYPTION", "compression": "BACKUP_COMPRESSION",
    "recipients": "BACKUP_RECIPIENTS", "identity_file": "BACKUP_IDENTITY_FILE", "signing_key": "BACKUP_SIGNING_KEY",
    "backup_name": "BACKUP_NAME", "host_id": "BACKUP_HOST_ID", "retention_days": "BACKUP_RETENTION_DAYS",
    "min_keep": "BACKUP_MIN_KEEP", "restore_role": "BACKUP_RESTORE_ROLE", "allow_seed": "BACKUP_ALLOW_SEED",
    "seed_passphrase": "BACKUP_SEED_PASSPHRASE", "seed_kdf": "BACKUP_SEED_KDF",
    "lock_wait_timeout": "BACKUP_LOCK_WAIT_TIMEOUT",
    "retry_window": "S3_RETRY_WINDOW_SECONDS",
}
_FIELD_HINTS = {
    "db_name": "name the database to back up (e.g. DB_NAME=quankey_prod)",
    "bucket": "name the backup bucket (e.g. S3_BUCKET=quankey-backups-prod)",
    "encryption_key": "generate one with `openssl rand -base64 32` and set it",
    "recipients": "set it to the public key(s) printed by `quankey-backup keygen` on the restore side",
    "identity_file": "point it at the private key file made by `quankey-backup keygen` (mode 0600)",
    "signing_key": "generate one with `openssl rand -base64 32` and set it where backups are made and where they are restored",
    "restore_role": "name the plain role restored SQL runs as (e.g. BACKUP_RESTORE_ROLE=quankey_restore)",
    "retry_window": "give the seconds a failing S3 request is retried (e.g. S3_RETRY_WINDOW_SECONDS=300; 0: no retries)",
    "seed_passphrase": "set it to the passphrase the seed's scripts gave openssl enc (their BACKUP_ENCRYPTION_KEY, as written)",
}


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


def _whole_number(variable, value, minimum, maximum):
    try:
        number = int(str(value).strip())
    except (TypeError, ValueError):
        raise ConfigError("%s must be a whole number, got %r" % (variable, value))
    if not minimum <= number <= maximum:
        raise ConfigError("%s must be between %d and %d, got %d" % (variable, minimum, maximum, number))
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


def read_env_file(path):
    """Read an env file; returns (values, warnings). A group/world-readable file is a warning."""
    warnings = []
    try:
        info = os.stat(path)
        with open(path, "r") as handle:
            text = handle.read()
    except FileNotFoundError:
        raise ConfigError("env file %s does not exist: create it (mode 0600) with the backup settings, "
                          "or pass --env-file" % path)
    except PermissionError:
        raise ConfigError("cannot read env file %s (permission denied): run as the backup user or root" % path)
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        warnings.append("env file %s is mode %04o and holds secrets: chmod 0600 %s"
                        % (path, stat.S_IMODE(info.st_mode), path))
    return parse_env_text(text, origin=path), warnings


def settings_from_env(env, origin=None, from_origin=None):
    """Build :class:`Settings` from a mapping of the seed's variable names.

    ``origin``: the env file the values came from; ``from_origin``: the names that did (default: all),
    so a message names "DB_PORT in /etc/quankey/backup.env" only for what that file set.
    """
    def get(name, default=None):
        value = env.get(name)
        return default if value in (None, "") else value

    return Settings(
        db_name=get("DB_NAME"), db_host=get("DB_HOST", "localhost"), db_port=get("DB_PORT", 5432),
        db_user=get("DB_USER", "postgres"), db_password=get("PGPASSWORD"), db_sslmode=get("DB_SSLMODE"),
        db_maintenance_db=get("DB_MAINTENANCE_DB", "postgres"), pg_bin_dir=get("PG_BIN_DIR"),
        bucket=get("S3_BUCKET"), prefix=get("S3_PREFIX", ""), region=get("AWS_DEFAULT_REGION", get("AWS_REGION")),
        endpoint_url=get("S3_ENDPOINT_URL"), access_key=get("AWS_ACCESS_KEY_ID"), secret_key=get("AWS_SECRET_ACCESS_KEY"),
        session_token=get("AWS_SESSION_TOKEN"), storage_class=get("S3_STORAGE_CLASS", DEFAULT_STORAGE_CLASS),
        encryption_key=get("BACKUP_ENCRYPTION_KEY"), encryption=get("BACKUP_ENCRYPTION", DEFAULT_ENCRYPTION),
        compression=get("BACKUP_COMPRESSION", "zstd"), backup_name=get("BACKUP_NAME"), host_id=get("BACKUP_HOST_ID"),
        retention_days=get("BACKUP_RETENTION_DAYS", 30), min_keep=get("BACKUP_MIN_KEEP", 3), source="environment",
        decryption_keys=get("BACKUP_DECRYPTION_KEYS"), keyring_file=get("BACKUP_KEYRING_FILE"),
        recipients=get("BACKUP_RECIPIENTS"), identity_file=get("BACKUP_IDENTITY_FILE"), signing_key=get("BACKUP_SIGNING_KEY"),
        restore_role=get("BACKUP_RESTORE_ROLE", DEFAULT_RESTORE_ROLE), allow_seed=get("BACKUP_ALLOW_SEED", False),
        seed_passphrase=get("BACKUP_SEED_PASSPHRASE"), seed_kdf=get("BACKUP_SEED_KDF"),
        lock_wait_timeout=get("BACKUP_LOCK_WAIT_TIMEOUT", DEFAULT_LOCK_WAIT_TIMEOUT),
        retry_window=get("S3_RETRY_WINDOW_SECONDS", DEFAULT_RETRY_WINDOW),
        pg_passthrough=dict((name, value) for name, value in env.items() if is_pg_passthrough(name) and value not in (None, "")),
        labels=dict((field, "%s in %s" % (variable, origin)) for field, variable in FIELD_VARIABLES.items()
                    if from_origin is None or variable in from_origin) if origin else None,
    )
