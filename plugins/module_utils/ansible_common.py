# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What every quankey.backup module shares: option groups, settings, missing libraries, errors.

This is the only file in ``module_utils`` that imports Ansible: it adapts the
engine to modules and holds no backup logic of its own.

- The options of settings come from the settings table (config.TABLE): one
  argument-spec builder per option group, each matched by a doc fragment
  (``postgres_argument_spec`` by ``quankey.backup.postgres``, ``s3_argument_spec``
  by ``quankey.backup.s3``, ``encryption_argument_spec`` by
  ``quankey.backup.encryption``, ``env_file`` by ``quankey.backup.env_file``), and
  :func:`setting_options` for the settings only some modules take; unit tests
  prove the docs agree with the table.
- Every module accepts all the groups, so ``module_defaults`` for
  ``group/quankey.backup.all`` can set the connection options once.
- A setting comes from the module's option, else the seed's environment variable
  on the managed host (the name the host command reads), else the env file
  (``env_file``, default /etc/quankey/backup.env when it exists), else the
  engine's default: the argument specs carry no defaults (Settings applies them).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import contextlib
import inspect
import logging
import os
import re
import traceback

from ansible.module_utils.basic import missing_required_lib

from . import config
from .adapters import s3
from .errors import BackupError
from .formats import compression, crypto
from .workflows import health

# The health rules' defaults: the module's options repeat these (a unit test checks the docs).
HEALTH_DEFAULTS = dict((name, parameter.default)
                       for name, parameter in inspect.signature(health.HealthPolicy).parameters.items())

# How a module says the switches the engine's messages name (config.COMMAND_FLAGS' names).
MODULE_FLAGS = {
    "backup": "the backup option", "target_db": "the target_db option", "force": "force: true",
    "no_owner": "no_owner: true", "as_admin": "restore_as_admin: true", "allow_unsigned": "allow_unsigned: true",
    "allow_seed": "allow_seed: true", "env_file": "the env_file option", "all": "all: true",
}
VOCABULARY = config.Vocabulary(options=True, flags=MODULE_FLAGS)
ENVIRONMENT = "the module's environment"  # where a setting read from the module's environment variables was set

_TYPES = {"str": "str", "choice": "str", "int": "int", "bool": "bool", "list": "list", "path": "path", "dict": "dict"}

# Python libraries a module may need: name -> (engine module, HAS_ flag, import error attribute).
_LIBRARIES = {
    "boto3": (s3, "HAS_BOTO3", "BOTO3_IMPORT_ERROR"),
    "cryptography": (crypto, "HAS_CRYPTOGRAPHY", "CRYPTOGRAPHY_IMPORT_ERROR"),
    "zstandard": (compression, "HAS_ZSTANDARD", "ZSTANDARD_IMPORT_ERROR"),
}


def option_spec(setting):
    """The argument spec of a setting's option: no default (Settings applies it) and no fallback (read here)."""
    spec = dict(type=_TYPES[setting.kind], no_log=setting.secret)
    if setting.kind == "list":
        spec["elements"] = "str"
    if setting.choices is not None:
        spec["choices"] = list(setting.choices)
    if setting.aliases:
        spec["aliases"] = list(setting.aliases)
    return spec


def _group(group):
    return dict((setting.option, option_spec(setting)) for setting in config.TABLE if setting.group == group)


def postgres_argument_spec():
    """PostgreSQL connection options (documented by the quankey.backup.postgres doc fragment)."""
    spec = _group(config.POSTGRES)
    spec["login_unix_socket"] = dict(type="path")  # no setting: it becomes the host (libpq takes a socket directory)
    return spec


def s3_argument_spec():
    """S3 location and credentials (documented by the quankey.backup.s3 doc fragment)."""
    return _group(config.S3)


def encryption_argument_spec():
    """The keys: active key, keyring, mode, recipients, identity, signing key, the seed's passphrase and derivation.

    Documented by the quankey.backup.encryption doc fragment.
    """
    return _group(config.ENCRYPTION)


def env_file_argument_spec():
    """Where the settings not given as options are read (documented by the quankey.backup.env_file doc fragment)."""
    return dict(env_file=dict(type="path"))


def setting_options(*options):
    """The argument specs of the settings only some modules take (config.MODULE), by option name."""
    by_option = dict((setting.option, setting) for setting in config.TABLE if setting.group == config.MODULE)
    return dict((option, option_spec(by_option[option])) for option in options)


def common_argument_spec(*option_sets, **module_options):
    """All the groups plus a module's own options: dicts of them (:func:`setting_options`) and keyword arguments.

    A module's option may add to a group's (e.g. ``elements``) or override what it says.
    """
    spec = {}
    spec.update(postgres_argument_spec())
    spec.update(s3_argument_spec())
    spec.update(encryption_argument_spec())
    spec.update(env_file_argument_spec())
    for options in option_sets + (module_options,):
        for name, option in options.items():
            spec[name] = dict(spec.get(name, {}), **option)
    return spec


def _options(params):
    """The first source of a module's settings: its options (the unix socket, when given, is the host)."""
    def find(setting):
        if setting.field == "db_host" and params.get("login_unix_socket"):
            return params["login_unix_socket"], "the login_unix_socket option"
        if setting.option and params.get(setting.option) is not None:
            return params[setting.option], "the %s option" % setting.option
        return None
    return find


def read_module_env_file(params, environ, warn):
    """``(path, values)`` of the module's env file: ``env_file``, $QUANKEY_ENV_FILE, or the default when it exists.

    A file named by the option or the variable must be readable (ConfigError); the default one is skipped, with a
    warning, when this user may not read it. Its process variables (proxies, CA bundle, AWS profile, ...) go into
    ``environ`` where it does not set them, and each variable the engine does not use is a warning
    (config.use_env_file).
    """
    given = params.get("env_file") or environ.get(config.ENV_FILE_VARIABLE)
    path = config.env_file_path(given, environ)
    if not path:
        return None, {}
    if not given and not os.access(path, os.R_OK):
        warn("env file %s is not readable by this user, so its settings are not used: run the task with become, or "
             "set env_file" % path)
        return None, {}
    values, warnings = config.use_env_file(path, environ, flag=VOCABULARY.flag("env_file"))
    for warning in warnings:
        warn(warning)
    return path, values


def settings_from_params(params, environ=None, warn=None, hide=None):
    """The engine's Settings of a module: its options, else the variables of its environment, else its env file
    (:func:`read_module_env_file`), else the engine's defaults.

    Messages name the option, or the variable and where it was set. ``warn(text)`` says what the
    module should warn of; ``hide(value)`` is given every secret read from the environment or the
    env file (AnsibleModule masks only options with no_log). Raises ConfigError (call it inside
    :func:`engine_errors`).
    """
    environ = os.environ if environ is None else environ
    path, values = read_module_env_file(params, environ, warn or (lambda text: None))
    sources = [_options(params), config.variables_source(environ, ENVIRONMENT)]
    if path:
        sources.append(config.variables_source(values, path))
    passthrough = config.pg_passthrough_of(values)
    if hide is not None:
        for setting in config.TABLE:
            if setting.secret:
                for name in setting.variables:
                    _hide(hide, environ.get(name))
                    _hide(hide, values.get(name))
        for name, value in passthrough.items():
            if "PASSWORD" in name:
                _hide(hide, value)
        for secret in config.process_secrets(values):
            hide(secret)
    return config.settings_from_sources(sources, source="module options", vocabulary=VOCABULARY,
                                        pg_passthrough=passthrough)


def _hide(hide, value):
    """Mask a secret in the module's results: the whole text and each of its words (lists of keys)."""
    if value:
        hide(value)
        for word in re.split(r"[\s,]+", value):
            if word and word != value:
                hide(word)


def module_settings(module):
    """:func:`settings_from_params` of an AnsibleModule: its warnings, and its secrets masked in its results."""
    settings = settings_from_params(module.params, os.environ, module.warn, module.no_log_values.add)
    if not settings.validate_certs:
        module.warn(s3.unverified_tls_warning(settings.endpoint_url, settings.label))
    return settings


def require_libraries(module, *names):
    """Fail the module the standard way when a Python library it needs is missing."""
    for name in names:
        engine_module, flag, error = _LIBRARIES[name]
        if not getattr(engine_module, flag):
            module.fail_json(msg=missing_required_lib(name), exception=getattr(engine_module, error))


def error_details(exc):
    """The machine-readable part of an engine error, returned beside ``msg`` as ``error``."""
    return {"type": type(exc).__name__, "step": exc.step, "exit_code": exc.exit_code}


class _ModuleLog(logging.Handler):
    """The engine's log lines (``INFO`` and up: a run's steps, its progress every 30 s) into the managed host's journal
    or syslog, through ``module.log`` (which masks the ``no_log`` values), as the host command writes them to stderr."""

    def __init__(self, module):
        logging.Handler.__init__(self, logging.INFO)
        self.module = module

    def emit(self, record):
        try:
            self.module.log("%s %s" % (record.levelname, record.getMessage()))
        except Exception:  # pylint: disable=broad-exception-caught  # a log that cannot be written stops nothing
            self.handleError(record)


@contextlib.contextmanager
def engine_errors(module, action):
    """Map engine failures to ``fail_json``; meanwhile the engine's log lines go to ``module.log`` (:class:`_ModuleLog`).

    Expected failures (BackupError) carry the engine's one-line message, the same
    words the host command prints, and no traceback (``fail_json`` is called
    after the ``except`` block, so Ansible attaches none). Anything else is a bug
    and keeps the full traceback in ``exception``, shown by Ansible with
    ``ANSIBLE_DISPLAY_TRACEBACK=error`` (2.19 and later) or ``-vvv`` (earlier).
    AnsibleModule masks ``no_log`` values in both.
    """
    expected = None
    engine_log, handler = logging.getLogger("quankey_backup"), _ModuleLog(module)
    level = engine_log.level
    engine_log.addHandler(handler)
    engine_log.setLevel(logging.INFO)
    try:
        yield
    except BackupError as exc:
        expected = exc
    except Exception as exc:  # pylint: disable=broad-exception-caught  # unexpected: keep every detail
        module.fail_json(msg="%s failed unexpectedly (%s: %s): this is a bug, please report it with the traceback "
                         "(ANSIBLE_DISPLAY_TRACEBACK=error)" % (action, type(exc).__name__, exc),
                         exception=traceback.format_exc())
    finally:
        engine_log.removeHandler(handler)
        engine_log.setLevel(level)
    if expected is not None:
        module.fail_json(msg=str(expected), error=error_details(expected))
