# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The pure parts of the workflows: database names within PostgreSQL's 63 bytes."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime

import pytest

from ansible_collections.quankey.backup.plugins.module_utils.catalog import dbnames, layout
from ansible_collections.quankey.backup.plugins.module_utils.errors import RefusedError

UTC = datetime.timezone.utc
WHEN = datetime.datetime(2025, 8, 9, 3, 0, 0, tzinfo=UTC)


def _record(db):
    return layout.BackupRecord("db1", db, "x_backup_20250809_030000", "m", "o")


@pytest.mark.parametrize("db", ["données_clients_" * 5, "é" * 40, "a" * 63, "短" * 30, "plain"])
def test_the_default_target_of_any_database_name_fits_in_63_bytes_and_keeps_whole_characters(db):
    target = dbnames.default_target(_record(db))
    assert len(target.encode("utf-8")) <= 63 and target.endswith("_restored_20250809_030000")
    assert dbnames.check_target_name(target) == target
    assert db.startswith(target[:-len("_restored_20250809_030000")])


@pytest.mark.parametrize("target", ["é" * 31 + "x", "a" * 63, "短" * 21, "t"])
@pytest.mark.parametrize("tag", [dbnames.STAGING_TAG, dbnames.REPLACED_TAG])
def test_staging_and_replaced_names_fit_never_equal_the_target_and_tell_their_age(target, tag):
    name = dbnames.side_name(target, tag, when=WHEN)
    assert len(name.encode("utf-8")) <= 63 and name != target and not target.startswith(name)
    prefix, found_tag, made = dbnames.parse_side_name(name)
    assert target.startswith(prefix) and found_tag == tag and made == WHEN
    assert dbnames.side_name(target, tag, when=WHEN) != name  # a random part: two restores never share one


def test_names_that_are_not_ours_are_not_taken_for_leftovers():
    for name in ("app", "app__restoring_", "app__restoring_2508090300_ab12", "app__restoring_250809030000_xyz1"):
        assert dbnames.parse_side_name(name) is None


@pytest.mark.parametrize("target", ["", "é" * 32, "a" * 64, "nul\x00"])
def test_a_target_postgresql_cannot_name_is_refused(target):
    with pytest.raises(RefusedError):
        dbnames.check_target_name(target)


def test_cutting_by_bytes_never_splits_a_character():
    assert dbnames.fit_name("aé", 2) == "a" and dbnames.fit_name("aé", 3) == "aé" and dbnames.fit_name("abc", 63) == "abc"
