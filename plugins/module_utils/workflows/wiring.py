# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one place the workflows build their adapters: the S3 store and the PostgreSQL client of the settings.

Every workflow takes its adapters as keyword arguments (``store=``, ``pg=``); when its caller gives none,
it asks here. Tests hand in fakes (tests/unit/plugins/module_utils/workflows/fakes.py) with the same methods.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ..adapters.postgres import PgClient
from ..adapters.s3 import S3Store
from ..errors import ConfigError


def open_store(settings, retry_window=None):
    """The S3 store of these settings (``retry_window``: at most that many seconds of retries, for quick answers)."""
    settings.require("bucket")
    return S3Store.from_settings(settings, retry_window)


def store_or_open(settings, store=None, retry_window=None):
    """``store`` when given, else the settings' (see :func:`open_store`)."""
    return store if store is not None else open_store(settings, retry_window)


def postgres(settings, pg=None):
    """``pg`` when given, else a client of the settings' database server (ConfigError when none can be made here)."""
    return pg if pg is not None else PgClient(settings)


def postgres_or_none(settings, pg=None):
    """``pg`` when given, else a client of the database server, or None when none can be made here (for leftovers)."""
    if pg is not None:
        return pg
    try:
        return PgClient(settings)
    except ConfigError:
        return None
