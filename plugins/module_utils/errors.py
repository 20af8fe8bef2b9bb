# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Typed failures of the backup engine.

Every expected failure is a :class:`BackupError` whose message is one line that
says what failed, where, and what to do. The host command turns ``exit_code``
into its process exit status; the modules pass ``str(error)`` to ``fail_json``.
Messages never contain secrets: callers build them from names, never values.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

# Process exit codes of the host command (documented in docs/CLI.md).
EXIT_OK = 0
EXIT_HEALTH_WARNING = 1
EXIT_HEALTH_CRITICAL = 2
EXIT_USAGE = 2
EXIT_CONFIG = 3
EXIT_POSTGRES = 4
EXIT_STORAGE = 5
EXIT_INTEGRITY = 6
EXIT_NOT_FOUND = 7
EXIT_REFUSED = 8
EXIT_INTERNAL = 70


class BackupError(Exception):
    """An expected failure with a clear, secret-free, one-line message."""

    exit_code = EXIT_INTERNAL

    def __init__(self, message, step=None):
        super(BackupError, self).__init__(message)
        self.message = message
        self.step = step

    def __str__(self):
        if self.step:
            return "%s failed: %s" % (self.step, self.message)
        return self.message


class ConfigError(BackupError):
    """A setting is missing or invalid (environment, env file or module option)."""

    exit_code = EXIT_CONFIG


class PostgresError(BackupError):
    """PostgreSQL is unreachable, refused us, or a client program failed."""

    exit_code = EXIT_POSTGRES


class StorageError(BackupError):
    """The object store is unreachable, refused us, or lacks the bucket."""

    exit_code = EXIT_STORAGE


class AccessDeniedError(StorageError):
    """The store refused this request for these credentials (IAM)."""


class IntegrityError(BackupError):
    """Stored bytes are not what was written: tampered, truncated or corrupt."""

    exit_code = EXIT_INTEGRITY


class TamperedError(IntegrityError):
    """A segment failed authentication (modified, reordered or foreign bytes)."""


class TruncatedError(IntegrityError):
    """The encrypted stream ended before its final segment."""


class ChecksumMismatchError(IntegrityError):
    """The SHA-256 of the stored object differs from its metadata."""


class WrongKeyError(IntegrityError):
    """The key given cannot open this backup's data key."""


class NotFoundError(BackupError):
    """No backup matches the selection."""

    exit_code = EXIT_NOT_FOUND


class RefusedError(BackupError):
    """The request would destroy something and was not explicitly forced."""

    exit_code = EXIT_REFUSED


class ConflictError(RefusedError):
    """A conditional write lost to another writer: the object was created or changed since it was read."""


def in_step(name, func, *args):
    """``func(*args)``; a BackupError it raises without a step is marked as failing in step ``name``."""
    try:
        return func(*args)
    except BackupError as exc:
        if not exc.step:
            exc.step = name
        raise
