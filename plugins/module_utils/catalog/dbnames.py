# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Database names a restore makes: its default target, its staging and replaced databases.

PostgreSQL cuts names at 63 bytes, not characters: every name here is cut by bytes without
splitting a character, and a staging or replaced name (``<target>__<tag>_<YYmmddHHMMSS>_<hex>``)
can never become its target. The time in it tells a leftover's age.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import re
import secrets

from ..errors import RefusedError
from . import layout

PG_NAME_LIMIT = 63
_SIDE_NAME_RE = re.compile(r"\A(?P<target>.*)__(?P<tag>restoring|replaced|drill)_(?P<stamp>\d{12})_[0-9a-f]{4}\Z", re.DOTALL)


def fit_name(text, limit=PG_NAME_LIMIT):
    """``text`` cut to at most ``limit`` UTF-8 bytes without splitting a character (PostgreSQL counts bytes)."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    return data[:limit].decode("utf-8", "ignore")


def default_target(record):
    """``<db>_restored_<YYYYmmdd_HHMMSS>`` of the backup, within PostgreSQL's 63-byte name limit."""
    suffix = "_restored_" + layout.format_timestamp(record.timestamp)
    return fit_name(record.db, PG_NAME_LIMIT - len(suffix)) + suffix


def check_target_name(target, option="--target-db"):
    """``target`` if PostgreSQL can name a database so, else RefusedError (also check mode's check).

    ``option``: how the caller names the target's option (a module: 'the target_db option').
    """
    if not target or len(target.encode("utf-8")) > PG_NAME_LIMIT:
        raise RefusedError("target database name %r is empty or longer than PostgreSQL's 63 bytes: choose another "
                           "with %s" % (target, option))
    if "\x00" in target:
        raise RefusedError("target database name %r contains a NUL character" % target)
    return target


STAGING_TAG, REPLACED_TAG = "restoring", "replaced"
DRILL_TAG = "drill"  # a restore drill's scratch database (workflows/drill.py)


def side_name(target, tag, when=None):
    """``<target, cut to fit>__<tag>_<YYmmddHHMMSS>_<hex>``: a staging or replaced database's name.

    It holds the time it was made (its age, for leftovers) and a random part, and fits in 63
    bytes by cutting the target's part by bytes, never a character in two, so it never
    becomes the target itself.
    """
    stamp = (when or layout.utcnow()).strftime("%y%m%d%H%M%S")
    suffix = "__%s_%s_%s" % (tag, stamp, secrets.token_hex(2))
    return fit_name(target, PG_NAME_LIMIT - len(suffix)) + suffix


def parse_side_name(name):
    """``(target prefix, tag, made at)`` of a name made by :func:`side_name`, or None."""
    match = _SIDE_NAME_RE.match(name)
    if not match:
        return None
    try:
        made = datetime.datetime.strptime(match.group("stamp"), "%y%m%d%H%M%S").replace(tzinfo=layout.UTC)
    except ValueError:
        return None
    return match.group("target"), match.group("tag"), made
