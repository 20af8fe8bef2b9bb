# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which archived WAL files prune deletes (catalog/retention.py's wal_deletable and wal_plan): those before the start
of every kept base backup, on its timeline or an earlier one; never a timeline history file, never a later timeline,
never anything without a kept base backup."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import pytest

from ansible_collections.quankey.backup.plugins.module_utils.catalog import retention
from ansible_collections.quankey.backup.plugins.module_utils.errors import ConfigError

START = "000000020000000100000010"  # a kept base backup on timeline 2, segment 1/10


@pytest.mark.parametrize("name, deleted", [
    ("00000002000000010000000F", True),  # the segment before the start, same timeline
    ("000000020000000000000FFF", True),  # an earlier xlogid (the 16 hex digits sort as WAL order)
    ("000000020000000100000010", False),  # the start segment itself
    ("000000020000000100000011", False),  # after it
    ("000000010000000100000005", True),  # an earlier timeline, before the start
    ("000000010000000100000010", False),  # an earlier timeline at the start's position
    ("000000010000000100000020", False),  # an earlier timeline, after the start's position (a fork's other branch)
    ("000000030000000000000001", False),  # a later timeline: never
    ("00000002000000010000000E.partial", True),  # a .partial before the start
    ("000000010000000100000010.partial", False),
    ("00000002000000010000000E.00000028.backup", True),  # an older base backup's history file
    ("000000020000000100000010.00000028.backup", False),  # the kept base backup's own
    ("00000001.history", False),  # timeline history files: never
    ("00000002.history", False),
    ("00000003.history", False),
])
def test_one_kept_base_backup_bounds_each_kind_of_file(name, deleted):
    assert retention.wal_deletable(name, [START]) is deleted


def test_nothing_is_deletable_without_a_kept_base_backup():
    assert retention.wal_deletable("000000010000000000000001", []) is False
    plan = retention.wal_plan(["000000010000000000000001", "000000010000000000000002"], [])
    assert plan == {"delete": [], "keep": ["000000010000000000000001", "000000010000000000000002"], "kept_from": None}


def test_a_name_postgresql_does_not_archive_is_an_error_for_one_and_kept_by_the_plan():
    with pytest.raises(ConfigError, match="is not a file PostgreSQL archives"):
        retention.wal_deletable("000000010000000000000001.tmp", [START])
    plan = retention.wal_plan(["000000010000000000000001.tmp", "notes.txt", "000000010000000000000001"], [START])
    assert plan["delete"] == ["000000010000000000000001"]
    assert plan["keep"] == ["000000010000000000000001.tmp", "notes.txt"]


def test_every_kept_base_backup_must_be_done_with_a_file_before_it_goes():
    # an older kept base on timeline 1 at 1/08 and a newer one on timeline 2 at 1/10: a file goes only when both are
    # past it; kept_from is the earliest start in WAL order
    older, newer = "000000010000000100000008", START
    names = ["000000010000000100000007", "000000010000000100000008", "00000001000000010000000C",
             "000000020000000100000009", "00000002000000010000000F", "000000020000000100000007",
             "00000002.history", "000000010000000100000007.00000060.backup"]
    plan = retention.wal_plan(names, [newer, older])
    assert plan["kept_from"] == older
    # timeline 1 before 1/08 goes; timeline 2's 1/07 is before the newer base's start but on a later timeline than
    # the older base's, which might follow it (a later timeline is never deleted for a base backup): kept
    assert plan["delete"] == ["000000010000000100000007", "000000010000000100000007.00000060.backup"]
    assert "000000020000000100000007" in plan["keep"]
    assert sorted(plan["keep"]) == sorted(set(names) - set(plan["delete"]))


def test_a_newer_base_backup_after_a_restart_from_scratch_keeps_what_it_needs():
    # a cluster made anew (initdb) restarts at timeline 1 with low segment numbers: its base backup starting at 0/03
    # keeps the old cluster's files from 0/03 on as well, though the older base backup alone would let them go
    plan = retention.wal_plan(["000000010000000000000002", "000000010000000000000004", "000000010000000000000090"],
                              ["000000010000000000000080", "000000010000000000000003"])
    assert plan["delete"] == ["000000010000000000000002"] and plan["kept_from"] == "000000010000000000000003"


def test_the_plan_deletes_oldest_first_in_wal_order_and_keeps_everything_else():
    names = ["000000010000000000000005", "000000010000000000000001", "000000010000000000000003",
             "000000010000000000000009", "00000001000000000000000A"]
    plan = retention.wal_plan(names, ["000000010000000000000009"])
    assert plan["delete"] == ["000000010000000000000001", "000000010000000000000003", "000000010000000000000005"]
    assert plan["keep"] == ["000000010000000000000009", "00000001000000000000000A"]
