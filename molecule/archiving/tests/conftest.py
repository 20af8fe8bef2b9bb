# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The fixtures and helpers every scenario shares (molecule/shared/fixtures.py), and the PostgreSQL 17 server inside
pg17 (molecule/shared/pg17.py, as in molecule/upgrade)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared"))
from fixtures import *  # noqa: E402,F401,F403  pylint: disable=wrong-import-position,wildcard-import,unused-wildcard-import
from pg17 import pg17, pytest_collection_modifyitems  # noqa: E402,F401  pylint: disable=wrong-import-position,unused-import
