# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The PostgreSQL 17 server inside pg17, a Debian 13 test host (molecule/upgrade/prepare.yml installs and starts it),
for the scenarios that run one (upgrade, archiving): its psql, and the skip of every test, saying why, when
create.yml skipped the scenario (the Debian mirror does not serve trixie). A scenario's conftest imports them."""

import json
from pathlib import Path

import pytest

from fixtures import _env


def pytest_collection_modifyitems(config, items):  # pylint: disable=unused-argument
    marker = Path(_env("MOLECULE_EPHEMERAL_DIRECTORY")) / "skipped"
    if marker.is_file():
        reason = "scenario skipped by create.yml: %s" % marker.read_text(encoding="utf-8").strip()
        for item in items:
            item.add_marker(pytest.mark.skip(reason=reason))


class ChrootPostgres:
    """psql 17 inside pg17 on its PostgreSQL 17 server, as the postgres OS user (peer authentication on its socket);
    the same interface as fixtures.Postgres, so tests/sampledb.py's table_digests reads either."""

    def __init__(self, host, port):
        self.host, self.port = host, port

    def psql(self, sql, db="postgres"):
        out = self.host.run("PGTZ=UTC sudo --preserve-env=PGTZ -u postgres psql -X -At -v ON_ERROR_STOP=1 -p %s "
                            "--dbname %s -c %s", str(self.port), db, sql)
        assert out.rc == 0, out.stderr
        return out.stdout


@pytest.fixture(scope="session")
def pg17(hosts):
    settings = json.loads((Path(_env("MOLECULE_EPHEMERAL_DIRECTORY")) / "pg17.json").read_text(encoding="utf-8"))
    return ChrootPostgres(hosts["pg17"], settings["port"])
