# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The names of the files PostgreSQL archives (WAL segments, ``.partial``, ``.backup`` and ``.history`` files), their
timelines, their order and the segments that follow one another (docs/FORMAT.md, "WAL objects").

Pure logic: nothing here reads a file or talks to S3. A segment's name is 24 upper-case hex digits:
the timeline (8), then the segment number as two halves of 8 (``XXXXXXXXYYYYYYYY``, where ``YYYYYYYY`` counts
from 0 to 2**32 / segment size - 1 before ``XXXXXXXX`` goes up by one). Within one timeline, names sort in WAL
order as text.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re

from ..errors import ConfigError

SEGMENT = "segment"
PARTIAL = "partial"
BACKUP_LABEL = "backup"
HISTORY = "history"

_PATTERNS = (
    (SEGMENT, re.compile(r"\A(?P<tl>[0-9A-F]{8})[0-9A-F]{16}\Z")),
    (PARTIAL, re.compile(r"\A(?P<tl>[0-9A-F]{8})[0-9A-F]{16}\.partial\Z")),
    (BACKUP_LABEL, re.compile(r"\A(?P<tl>[0-9A-F]{8})[0-9A-F]{16}\.[0-9A-F]{8}\.backup\Z")),
    (HISTORY, re.compile(r"\A(?P<tl>[0-9A-F]{8})\.history\Z")),
)

MIN_SEGMENT_SIZE = 1024 * 1024  # wal_segment_size: a power of two from 1 MiB to 1 GiB (initdb --wal-segsize)
MAX_SEGMENT_SIZE = 1024 * 1024 * 1024
DEFAULT_SEGMENT_SIZE = 16 * 1024 * 1024


class WalName:
    """One archived file's name: ``name``, ``kind`` (SEGMENT, PARTIAL, BACKUP_LABEL, HISTORY) and ``timeline`` (8 hex)."""

    __slots__ = ("name", "kind", "timeline")

    def __init__(self, name, kind, timeline):
        self.name = name
        self.kind = kind
        self.timeline = timeline

    def __repr__(self):
        return "WalName(%s)" % self.name

    @property
    def is_segment(self):
        """Whether it is a whole WAL segment (the files a restore asks for one after another)."""
        return self.kind == SEGMENT


def parse(name, what="WAL file name"):
    """The :class:`WalName` of ``name``; ConfigError saying what PostgreSQL's names look like when it is none of them."""
    text = name if isinstance(name, str) else ""
    for kind, pattern in _PATTERNS:
        match = pattern.match(text)
        if match:
            if match.group("tl") == "00000000":
                break  # timeline 0 does not exist
            return WalName(text, kind, match.group("tl"))
    raise ConfigError("%s %r is not a file PostgreSQL archives: expected a WAL segment (24 upper-case hex digits, such "
                      "as 000000010000000000000003, or with .partial), a backup history file "
                      "(000000010000000000000003.00000028.backup) or a timeline history file (00000002.history); "
                      "give archive_command %%p and restore_command %%f as PostgreSQL fills them in" % (what, name))


def segments_per_xlogid(segment_size):
    """How many segments one ``XXXXXXXX`` value holds: 2**32 / the segment size."""
    check_segment_size(segment_size)
    return 0x100000000 // segment_size


def check_segment_size(segment_size):
    """``segment_size`` when it is one PostgreSQL allows (a power of two, 1 MiB to 1 GiB), else ValueError."""
    if (not isinstance(segment_size, int) or segment_size < MIN_SEGMENT_SIZE or segment_size > MAX_SEGMENT_SIZE
            or segment_size & (segment_size - 1)):
        raise ValueError("%r is not a WAL segment size: a power of two from 1 MiB to 1 GiB" % (segment_size,))
    return segment_size


def segment_number(name, segment_size=DEFAULT_SEGMENT_SIZE):
    """``(timeline as int, segment number)`` of a segment's name (the number counts across ``XXXXXXXX`` values)."""
    parsed = parse(name)
    if not parsed.is_segment:
        raise ValueError("%s is not a WAL segment's name" % name)
    return int(name[:8], 16), int(name[8:16], 16) * segments_per_xlogid(segment_size) + int(name[16:24], 16)


def segment_name(timeline, number, segment_size=DEFAULT_SEGMENT_SIZE):
    """The name of segment ``number`` on ``timeline`` (ints): the inverse of :func:`segment_number`."""
    per = segments_per_xlogid(segment_size)
    return "%08X%08X%08X" % (timeline, number // per, number % per)


def following(name, count, segment_size=DEFAULT_SEGMENT_SIZE):
    """The names of the ``count`` segments after segment ``name`` on its timeline, in order ([] for other files)."""
    if count <= 0 or not parse(name).is_segment:
        return []
    timeline, number = segment_number(name, segment_size)
    return [segment_name(timeline, number + step, segment_size) for step in range(1, count + 1)]


def xlogid_prefixes(name, segment_size=DEFAULT_SEGMENT_SIZE):
    """The name prefixes (timeline + ``XXXXXXXX``) under which a segment after ``name`` on its timeline may be found
    soonest: its own ``XXXXXXXX``, and the next one (for the last segments of an ``XXXXXXXX``)."""
    timeline, number = segment_number(name, segment_size)
    per = segments_per_xlogid(segment_size)
    return ["%08X%08X" % (timeline, number // per), "%08X%08X" % (timeline, number // per + 1)]
