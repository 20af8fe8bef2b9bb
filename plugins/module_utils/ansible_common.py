# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What every quankey.backup module shares: option groups, settings, missing libraries, errors.

This is the only file in ``module_utils`` that imports Ansible: it adapts the
engine to modules and holds no backup logic of its own.

- One argument-spec builder per option group, each matched by a doc fragment
  (``postgres_argument_spec`` by ``quankey.backup.postgres``, ``s3_argument_spec``
  by ``quankey.backup.s3``, ``encryption_argument_spec`` by
  ``quankey.backup.encryption``); a unit test proves each pair agrees.
- Every module accepts all three groups, so ``module_defaults`` for
  ``group/quankey.backup.all`` can set the connection options once.
- Options fall back to the seed's environment variables (the names the host
  command reads), as amazon.aws does for ``AWS_*``.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import contextlib
import inspect
import traceback

from ansible.module_utils.basic import env_fallback, missing_required_lib

from . import config
from . import keys
from .adapters import s3
from .errors import BackupError
from .formats import compression, crypto
from .workflows import health

# The engine's own defaults: the argument specs (and, checked by a unit test, the docs) repeat these.
SETTINGS_DEFAULTS = dict((name, parameter.default)
                         for name, parameter in inspect.signature(config.Settings).parameters.items())
HEALTH_DEFAULTS = dict((name, parameter.default)
                       for name, parameter in inspect.signature(health.HealthPolicy).parameters.items())

# Module option -> config.Settings argument.
_SETTING_OF_OPTION = {
    "login_host": "db_host", "login_port": "db_port", "login_user": "db_user", "login_password": "db_password",
    "db": "db_name", "ssl_mode": "db_sslmode", "maintenance_db": "db_maintenance_db", "pg_bin_dir": "pg_bin_dir",
    "restore_role": "restore_role", "allow_seed": "allow_seed",
    "bucket": "bucket", "prefix": "prefix", "host_id": "host_id", "region": "region", "endpoint_url": "endpoint_url",
    "access_key": "access_key", "secret_key": "secret_key", "session_token": "session_token",
    "encryption_key": "encryption_key", "decryption_keys": "decryption_keys", "keyring_file": "keyring_file",
    "encryption": "encryption", "compression": "compression", "recipients": "recipients",
    "identity_file": "identity_file", "signing_key": "signing_key", "seed_passphrase": "seed_passphrase",
    "seed_kdf": "seed_kdf",
    "storage_class": "storage_class", "name": "backup_name", "retention_days": "retention_days",
}

# Python libraries a module may need: name -> (engine module, HAS_ flag, import error attribute).
_LIBRARIES = {
    "boto3": (s3, "HAS_BOTO3", "BOTO3_IMPORT_ERROR"),
    "cryptography": (crypto, "HAS_CRYPTOGRAPHY", "CRYPTOGRAPHY_IMPORT_ERROR"),
    "zstandard": (compression, "HAS_ZSTANDARD", "ZSTANDARD_IMPORT_ERROR"),
}


def _env(*names):
    return (env_fallback, list(names))


def postgres_argument_spec():
    """PostgreSQL connection options (documented by the quankey.backup.postgres doc fragment)."""
    return dict(
        login_host=dict(type="str", default=SETTINGS_DEFAULTS["db_host"], fallback=_env("DB_HOST")),
        login_port=dict(type="int", default=SETTINGS_DEFAULTS["db_port"], fallback=_env("DB_PORT")),
        login_user=dict(type="str", default=SETTINGS_DEFAULTS["db_user"], fallback=_env("DB_USER")),
        login_password=dict(type="str", no_log=True, fallback=_env("PGPASSWORD")),
        login_unix_socket=dict(type="path"),
        db=dict(type="str", fallback=_env("DB_NAME")),
        ssl_mode=dict(type="str", choices=list(config.SSL_MODES), default="prefer", fallback=_env("DB_SSLMODE")),
        maintenance_db=dict(type="str", default=SETTINGS_DEFAULTS["db_maintenance_db"],
                            fallback=_env("DB_MAINTENANCE_DB")),
        pg_bin_dir=dict(type="path", fallback=_env("PG_BIN_DIR")),
        restore_role=dict(type="str", default=SETTINGS_DEFAULTS["restore_role"], fallback=_env("BACKUP_RESTORE_ROLE")),
    )


def s3_argument_spec():
    """S3 location and credentials (documented by the quankey.backup.s3 doc fragment)."""
    return dict(
        bucket=dict(type="str", required=True, fallback=_env("S3_BUCKET")),
        prefix=dict(type="str", default=SETTINGS_DEFAULTS["prefix"], fallback=_env("S3_PREFIX")),
        host_id=dict(type="str", fallback=_env("BACKUP_HOST_ID")),
        region=dict(type="str", aliases=["aws_region"], fallback=_env("AWS_DEFAULT_REGION", "AWS_REGION")),
        endpoint_url=dict(type="str", aliases=["aws_endpoint_url"], fallback=_env("S3_ENDPOINT_URL")),
        access_key=dict(type="str", aliases=["aws_access_key_id"], no_log=False,
                        fallback=_env("AWS_ACCESS_KEY_ID", "AWS_ACCESS_KEY")),
        secret_key=dict(type="str", aliases=["aws_secret_access_key"], no_log=True,
                        fallback=_env("AWS_SECRET_ACCESS_KEY", "AWS_SECRET_KEY")),
        session_token=dict(type="str", aliases=["aws_session_token"], no_log=True,
                           fallback=_env("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")),
    )


def encryption_argument_spec():
    """The keys: active key, keyring, mode, recipients, identity, signing key, the seed's passphrase and derivation.

    Documented by the quankey.backup.encryption doc fragment.
    """
    return dict(
        encryption_key=dict(type="str", no_log=True, fallback=_env(crypto.MASTER_KEY_NAME)),
        decryption_keys=dict(type="list", elements="str", no_log=True, fallback=_env(keys.DECRYPTION_KEYS_NAME)),
        keyring_file=dict(type="path", no_log=False, fallback=_env(keys.KEYRING_FILE_NAME)),
        encryption=dict(type="str", choices=list(config.ENCRYPTIONS), default=SETTINGS_DEFAULTS["encryption"],
                        fallback=_env("BACKUP_ENCRYPTION")),
        recipients=dict(type="list", elements="str", no_log=False, fallback=_env("BACKUP_RECIPIENTS")),
        identity_file=dict(type="path", no_log=False, fallback=_env("BACKUP_IDENTITY_FILE")),
        signing_key=dict(type="str", no_log=True, fallback=_env("BACKUP_SIGNING_KEY")),
        seed_passphrase=dict(type="str", no_log=True, fallback=_env("BACKUP_SEED_PASSPHRASE")),
        seed_kdf=dict(type="str", fallback=_env("BACKUP_SEED_KDF")),
    )


def common_argument_spec(**module_options):
    """All three groups plus a module's own options (which may override a group's, e.g. to make it required)."""
    spec = {}
    spec.update(postgres_argument_spec())
    spec.update(s3_argument_spec())
    spec.update(encryption_argument_spec())
    for name, option in module_options.items():
        spec[name] = dict(spec.get(name, {}), **option)
    return spec


def settings_from_params(params):
    """The engine's Settings from module parameters (unset options keep the engine's defaults).

    Raises ConfigError (call it inside :func:`engine_errors`).
    """
    values = {}
    for option, field in _SETTING_OF_OPTION.items():
        if params.get(option) is not None:
            values[field] = params[option]
    if params.get("login_unix_socket"):
        values["db_host"] = params["login_unix_socket"]  # libpq takes a socket directory as the host
    labels = dict((field, "the %s option" % option) for option, field in _SETTING_OF_OPTION.items())
    return config.Settings(source="module options", labels=labels, **values)


def require_libraries(module, *names):
    """Fail the module the standard way when a Python library it needs is missing."""
    for name in names:
        engine_module, flag, error = _LIBRARIES[name]
        if not getattr(engine_module, flag):
            module.fail_json(msg=missing_required_lib(name), exception=getattr(engine_module, error))


def error_details(exc):
    """The machine-readable part of an engine error, returned beside ``msg`` as ``error``."""
    return {"type": type(exc).__name__, "step": exc.step, "exit_code": exc.exit_code}


@contextlib.contextmanager
def engine_errors(module, action):
    """Map engine failures to ``fail_json``.

    Expected failures (BackupError) carry the engine's one-line message, the same
    words the host command prints, and no traceback (``fail_json`` is called
    after the ``except`` block, so Ansible attaches none). Anything else is a bug
    and keeps the full traceback in ``exception``, shown by Ansible with
    ``ANSIBLE_DISPLAY_TRACEBACK=error`` (2.19 and later) or ``-vvv`` (earlier).
    AnsibleModule masks ``no_log`` values in both.
    """
    expected = None
    try:
        yield
    except BackupError as exc:
        expected = exc
    except Exception as exc:  # pylint: disable=broad-exception-caught  # unexpected: keep every detail
        module.fail_json(msg="%s failed unexpectedly (%s: %s): this is a bug, please report it with the traceback "
                         "(ANSIBLE_DISPLAY_TRACEBACK=error)" % (action, type(exc).__name__, exc),
                         exception=traceback.format_exc())
    if expected is not None:
        module.fail_json(msg=str(expected), error=error_details(expected))
