# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fixtures shared by the module_utils unit tests of this directory (workflows/ has its own conftest.py)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import pytest

from ansible_collections.quankey.backup.plugins.module_utils.workflows import wiring
from ansible_collections.quankey.backup.tests.unit.plugins.module_utils.workflows.fakes import ENV, MemoryStore


@pytest.fixture
def store(request, monkeypatch):
    """For health's rules (test_health_base.py, test_health_kind.py): an empty in-memory bucket of ENV's whose clock is
    the test module's NOW; health finds no PostgreSQL server (wiring.postgres_or_none answers None), so the wal rule
    judges the bucket alone."""
    monkeypatch.setattr(wiring, "postgres_or_none", lambda settings, pg=None: None)
    return MemoryStore(ENV["S3_BUCKET"], now=request.module.NOW)
