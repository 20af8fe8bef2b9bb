# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Settings, an in-memory bucket and a fake PostgreSQL server for the workflows' unit tests (fakes.py)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import pytest

from ansible_collections.quankey.backup.plugins.module_utils import config
from ansible_collections.quankey.backup.tests.unit.plugins.module_utils.workflows.fakes import ENV, FakePg, MemoryStore


@pytest.fixture
def make_settings():
    """make_settings(VARIABLE=value, ...) -> Settings of ENV with those changed (None: unset)."""
    def make(**changes):
        env = dict(ENV)
        env.update(changes)
        return config.settings_from_env(dict((name, value) for name, value in env.items() if value is not None))
    return make


@pytest.fixture
def settings(make_settings):
    return make_settings()


@pytest.fixture
def store():
    return MemoryStore(ENV["S3_BUCKET"])


@pytest.fixture
def pg(settings, tmp_path):
    """The server with the database to back up (``app``: a 3-table archive)."""
    server = FakePg(settings, str(tmp_path / "pg"))
    server.add_database("app")
    return server
