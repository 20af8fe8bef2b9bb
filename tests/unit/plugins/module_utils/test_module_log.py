# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A module's engine log lines (its progress every 30 s among them) go to ``module.log`` while the engine runs."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import logging

import pytest

from ansible_collections.quankey.backup.plugins.module_utils import ansible_common
from ansible_collections.quankey.backup.plugins.module_utils.errors import PostgresError
from ansible_collections.quankey.backup.plugins.module_utils.progress import Progress, Stages


class _Failed(Exception):
    pass


class _Module:
    """Records what AnsibleModule.log and fail_json would get."""

    def __init__(self):
        self.logged = []
        self.failure = None

    def log(self, msg):
        self.logged.append(msg)

    def fail_json(self, **kwargs):
        self.failure = kwargs
        raise _Failed()


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_the_engine_s_info_lines_and_progress_reach_module_log_while_it_runs():
    module, clock = _Module(), _Clock()
    engine = logging.getLogger("quankey_backup")
    level, handlers = engine.level, list(engine.handlers)
    with ansible_common.engine_errors(module, "backup"):
        engine.debug("not for the journal")
        engine.info("backup x of database y")
        progress = Progress("backup", clock=clock, interval=30, heartbeat=False)
        with Stages(progress)("dump_upload", total=4 * 1024 ** 3, estimated=True):
            clock.now += 40
            progress(1024 ** 3)
    engine.info("after the module's run: not its")
    assert module.logged == ["INFO backup x of database y",
                             "INFO backup progress, dump+upload: 1.0 GiB of ~4.0 GiB (25 %), 25.6 MiB/s, ETA 2m 00s"]
    assert (engine.level, engine.handlers) == (level, handlers)


def test_a_failing_run_still_logs_and_leaves_the_logger_as_it_was():
    module = _Module()
    engine = logging.getLogger("quankey_backup")
    level, handlers = engine.level, list(engine.handlers)
    with pytest.raises(_Failed):
        with ansible_common.engine_errors(module, "backup"):
            engine.warning("the globals leave out password hashes")
            raise PostgresError("pg_dump exited with status 1", step="pg_dump")
    assert module.logged == ["WARNING the globals leave out password hashes"]
    assert module.failure["error"]["step"] == "pg_dump"
    assert (engine.level, engine.handlers) == (level, handlers)
