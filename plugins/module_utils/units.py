# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Numbers for people: byte sizes in messages, tables and progress lines."""

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
