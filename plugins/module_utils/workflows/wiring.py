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


# The replica's settings that stand for the primary's when set (unset ones: the primary's own).
REPLICA_FIELDS = {"bucket": "replica_bucket", "endpoint_url": "replica_endpoint_url", "region": "replica_region",
                  "access_key": "replica_access_key", "secret_key": "replica_secret_key"}


def replica_of(settings, field):
    """The replica's value of a primary's S3 setting (``endpoint_url``, ``region``...): its S3_REPLICA_* one when set,
    else the primary's (credentials: the replica's keys when set, else all of the primary's, profile included)."""
    own = REPLICA_FIELDS.get(field)
    if own and getattr(settings, own):
        return getattr(settings, own)
    if field in ("access_key", "secret_key", "session_token", "profile") and settings.replica_access_key:
        return None  # the replica's own keys replace the primary's credentials wholesale
    return getattr(settings, field)


def open_replica(settings, retry_window=None):
    """The replica's S3 store (S3_REPLICA_BUCKET and the S3_REPLICA_* settings), or None when no replica is set.

    It writes no Object Lock (the replica bucket's own default retention, if any, applies)."""
    if not settings.replica_bucket:
        return None
    window = settings.retry_window if retry_window is None else min(retry_window, settings.retry_window)

    def label(field):
        own = REPLICA_FIELDS.get(field)
        return settings.label(own if own and getattr(settings, own) else field)

    store = S3Store(settings.replica_bucket, region=replica_of(settings, "region"),
                    endpoint_url=replica_of(settings, "endpoint_url"), access_key=replica_of(settings, "access_key"),
                    secret_key=replica_of(settings, "secret_key"), session_token=replica_of(settings, "session_token"),
                    profile=replica_of(settings, "profile"), storage_class=settings.storage_class, retry_window=window,
                    label=label, ca_bundle=settings.ca_bundle, validate_certs=settings.validate_certs,
                    aws_config=settings.aws_config, max_attempts=settings.max_attempts, retry_mode=settings.retry_mode)
    store.restore_tier, store.restore_days = settings.restore_tier, settings.restore_days
    return store


def same_account(settings):
    """Whether the replica is reached at the primary's endpoint with the primary's credentials (then a server-side
    CopyObject can copy between the buckets)."""
    return (replica_of(settings, "endpoint_url") == settings.endpoint_url
            and replica_of(settings, "access_key") == settings.access_key
            and replica_of(settings, "profile") == settings.profile)


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
