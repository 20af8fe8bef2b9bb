# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Numbers for people: byte sizes and durations in messages, tables and progress lines."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type


def human_size(num):
    """``1536`` as ``1.5 KiB``; bytes below 1 KiB as ``512 B``."""
    value = float(num)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return ("%d %s" % (value, unit)) if unit == "B" else ("%.1f %s" % (value, unit))
        value /= 1024.0
    return "%d B" % num


def human_duration(seconds):
    """``4321`` as ``1h 12m``, ``125`` as ``2m 05s``, ``7.4`` as ``7s``: an ETA or a stage's time for people."""
    total = int(round(max(float(seconds), 0.0)))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return "%dh %02dm" % (hours, minutes)
    if minutes:
        return "%dm %02ds" % (minutes, secs)
    return "%ds" % secs
