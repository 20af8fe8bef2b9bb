# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the workflows tell their progress (the totals, the stages) and the stages' seconds in their results, on the
fakes, with a clock that moves 40 s each time it is read so that every byte count is due a log line."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import logging

import pytest

from ansible_collections.quankey.backup.plugins.module_utils.progress import Progress
from ansible_collections.quankey.backup.plugins.module_utils.units import human_size
from ansible_collections.quankey.backup.plugins.module_utils.workflows import backup, restore
from ansible_collections.quankey.backup.tests.unit.plugins.module_utils.workflows.fakes import archive

UTC = datetime.timezone.utc
WHEN = datetime.datetime(2025, 8, 20, 3, 0, 0, tzinfo=UTC)


class Striding:
    """A clock 40 s further on each time it is read."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        self.now += 40.0
        return self.now


class Logged(logging.Handler):
    """What the engine logs (its logger may not propagate to pytest's: cli._setup_logging)."""

    def __init__(self):
        logging.Handler.__init__(self, logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def logged():
    engine = logging.getLogger("quankey_backup")
    handler, level = Logged(), engine.level
    engine.addHandler(handler)
    engine.setLevel(logging.INFO)
    yield handler.messages
    engine.removeHandler(handler)
    engine.setLevel(level)


def _progress(label):
    return Progress(label, None, clock=Striding(), interval=30, heartbeat=False)


def _progress_lines(logged, label):
    return [message for message in logged if message.startswith(label + " progress, ")]


def _stages_fit(result):
    """The stages took no longer than the whole: each is rounded to the millisecond, so their sum may pass the
    rounded total by half a millisecond per stage."""
    stages = result["stage_seconds"]
    return sum(stages.values()) <= result["duration_seconds"] + 0.0005 * len(stages) + 1e-9


def test_a_backup_logs_its_dump_towards_the_database_size_and_times_its_stages(settings, store, pg, logged):
    pg.add_database("app", archive(tables=3, size=3 * 1024 * 1024))
    taken = backup.run_backup(settings, store=store, pg=pg, now=WHEN, progress=_progress("backup"))
    dumped = [line for line in _progress_lines(logged, "backup") if line.startswith("backup progress, dump+upload: ")]
    assert dumped, _progress_lines(logged, "backup")
    estimate = human_size(pg.database_size("app"))
    assert all(" of ~%s (" % estimate in line and ", ETA " in line for line in dumped), dumped
    assert list(taken["stage_seconds"]) == ["prepare", "dump_upload", "commit"]
    assert all(seconds > 0 for seconds in taken["stage_seconds"].values())
    assert _stages_fit(taken)
    committed = [message for message in logged if " committed: " in message]
    assert committed and "(prepare " in committed[0] and ", dump+upload " in committed[0]


def test_a_restore_logs_its_download_towards_the_exact_size_and_times_its_stages(settings, store, pg, logged):
    pg.add_database("app", archive(tables=3, size=3 * 1024 * 1024))
    taken = backup.run_backup(settings, store=store, pg=pg, now=WHEN, progress=_progress("backup"))
    restored = restore.run_restore(settings, target_db="app_copy", store=store, pg=pg, progress=_progress("restore"))
    downloaded = [line for line in _progress_lines(logged, "restore")
                  if line.startswith("restore progress, download+restore: ")]
    total = " of %s (" % human_size(taken["size_bytes"])
    assert downloaded and all(total in line and "~" not in line for line in downloaded), downloaded
    assert downloaded[-1].startswith("restore progress, download+restore: %s%s100 %%)" % (
        human_size(taken["size_bytes"]), total))
    assert list(restored["stage_seconds"]) == ["prepare", "download_restore", "checks", "swap"]
    assert _stages_fit(restored)

    verified = restore.run_verify(settings, store=store, pg=pg, progress=_progress("verify"))
    assert list(verified["stage_seconds"]) == ["prepare", "download_verify"]
    assert _stages_fit(verified)
    assert any(line.startswith("verify progress, download+verify: ") for line in _progress_lines(logged, "verify"))


def test_without_a_progress_the_workflows_still_time_their_stages(settings, store, pg):
    taken = backup.run_backup(settings, store=store, pg=pg, now=WHEN)
    assert set(taken["stage_seconds"]) == {"prepare", "dump_upload", "commit"}
    assert _stages_fit(taken)
