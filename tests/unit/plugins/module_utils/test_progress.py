# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Progress people can follow (progress.py): the line's words, the ETA, the log interval and the stages' seconds,
with a clock the tests drive instead of sleeping."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import io
import logging

import pytest

from ansible_collections.quankey.backup.plugins.module_utils import progress as progress_mod
from ansible_collections.quankey.backup.plugins.module_utils.errors import ConfigError
from ansible_collections.quankey.backup.plugins.module_utils.progress import (PROGRESS_LOG_SECONDS, Progress, Stages,
                                                                              eta_seconds, floor_seconds, log_interval,
                                                                              progress_text, stages_text)
from ansible_collections.quankey.backup.plugins.module_utils.units import human_duration

MIB = 1024 * 1024
GIB = 1024 * MIB


class Clock:
    """A clock the test moves."""

    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now

    def tick(self, seconds):
        self.now += seconds


class Tty(io.StringIO):
    def isatty(self):
        return True


class Lines(logging.Handler):
    """The messages logged, in order."""

    def __init__(self):
        logging.Handler.__init__(self)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def lines():
    handler = Lines()
    logger = logging.getLogger("quankey_backup.test_progress")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield handler, logger
    logger.removeHandler(handler)


@pytest.mark.parametrize("seconds, text", [(0, "0s"), (7.4, "7s"), (59.6, "1m 00s"), (125, "2m 05s"),
                                           (3599, "59m 59s"), (4321, "1h 12m"), (3 * 3600 + 5, "3h 00m"), (-3, "0s")])
def test_durations_for_people(seconds, text):
    assert human_duration(seconds) == text


def test_eta_is_what_is_left_at_the_rate_so_far():
    assert eta_seconds(GIB, 4 * GIB, 100.0) == pytest.approx(300.0)
    assert eta_seconds(0, 4 * GIB, 100.0) is None  # no rate yet
    assert eta_seconds(GIB, None, 100.0) is None  # no total
    assert eta_seconds(5 * GIB, 4 * GIB, 100.0) is None  # past an estimate: no made-up time
    assert eta_seconds(GIB, 4 * GIB, 0.0) is None


def test_an_estimated_total_is_shown_with_a_tilde_share_rate_and_eta():
    text = progress_text(1536 * MIB, 60.0, total=4 * GIB, estimated=True)
    assert text == "1.5 GiB of ~4.0 GiB (37 %), 25.6 MiB/s, ETA 1m 40s"


def test_an_exact_total_has_no_tilde_and_ends_at_100_percent():
    assert progress_text(50 * MIB, 2.0, total=100 * MIB) == "50.0 MiB of 100.0 MiB (50 %), 25.0 MiB/s, ETA 2s"
    assert progress_text(100 * MIB, 4.0, total=100 * MIB) == "100.0 MiB of 100.0 MiB (100 %), 25.0 MiB/s"


def test_past_an_estimate_says_so_rather_than_a_share_over_100_percent():
    text = progress_text(5 * GIB, 100.0, total=4 * GIB, estimated=True)
    assert text == "5.0 GiB (past the ~4.0 GiB estimated), 51.2 MiB/s"
    assert "%" not in text and "ETA" not in text


def test_without_a_total_bytes_and_rate_only():
    assert progress_text(10 * MIB, 5.0) == "10.0 MiB, 2.0 MiB/s"
    assert progress_text(10, 0.0) == "10 B"


def test_the_log_interval_is_30_s_unless_the_variable_says_otherwise():
    assert PROGRESS_LOG_SECONDS == 30
    assert log_interval({}) == 30.0
    assert log_interval({"QUANKEY_PROGRESS_LOG_SECONDS": ""}) == 30.0
    assert log_interval({"QUANKEY_PROGRESS_LOG_SECONDS": "0.2"}) == 0.2
    assert log_interval({"QUANKEY_PROGRESS_LOG_SECONDS": " 600 "}) == 600.0


@pytest.mark.parametrize("value", ["0", "-5", "soon", "nan", "inf"])
def test_a_bad_log_interval_is_refused_naming_the_variable_and_the_fix(value):
    with pytest.raises(ConfigError) as caught:
        log_interval({"QUANKEY_PROGRESS_LOG_SECONDS": value})
    assert "QUANKEY_PROGRESS_LOG_SECONDS is %r" % value in str(caught.value)
    assert "a number above 0" in str(caught.value)


def test_not_on_a_terminal_a_three_hour_backup_logs_a_line_every_30_s(lines):
    handler, logger = lines
    clock = Clock()
    progress = Progress("backup", io.StringIO(), clock=clock, interval=PROGRESS_LOG_SECONDS, heartbeat=False,
                        log=logger)
    rate = 10 * MIB  # bytes per second, reported once a second
    with Stages(progress)("dump_upload", total=3 * 3600 * rate, estimated=True):
        for second in range(1, 3 * 3600 + 1):
            clock.tick(1.0)
            progress(second * rate)
    assert len(handler.messages) == 3 * 3600 // 30
    assert handler.messages[0] == "backup progress, dump+upload: 300.0 MiB of ~105.5 GiB (0 %), 10.0 MiB/s, ETA 2h 59m"
    assert handler.messages[-2].startswith("backup progress, dump+upload: 105.2 GiB of ~105.5 GiB (99 %), ")
    assert handler.messages[-2].endswith(", ETA 30s")


def test_no_line_before_the_interval_and_none_on_a_terminal(lines):
    handler, logger = lines
    clock = Clock()
    quiet = Progress("backup", None, clock=clock, interval=30, heartbeat=False, log=logger)
    clock.tick(29.9)
    quiet(MIB)
    assert handler.messages == []
    clock.tick(0.1)
    quiet(2 * MIB)
    assert handler.messages == ["backup progress, 2.0 MiB, 68.3 KiB/s"]
    terminal = Progress("restore", Tty(), clock=clock, interval=30, heartbeat=False, log=logger)
    clock.tick(60)
    terminal(MIB, 2 * MIB)
    terminal.poll()
    assert len(handler.messages) == 1


def test_the_heartbeat_says_a_stage_without_bytes_is_still_running(lines):
    handler, logger = lines
    clock = Clock()
    progress = Progress("restore", None, clock=clock, interval=30, heartbeat=False, log=logger)
    stages = Stages(progress)
    with stages("checks"):
        clock.tick(20)
        progress.poll()
        assert handler.messages == []
        clock.tick(10)
        progress.poll()
        progress.poll()  # not due again yet
    assert handler.messages == ["restore progress, checks: running for 30s"]


def test_the_heartbeat_thread_logs_while_nothing_is_reported(lines):
    handler, logger = lines
    clock = Clock()
    progress = Progress("restore", None, clock=clock, interval=0.01, log=logger)
    with Stages(progress)("download_restore", total=10 * MIB):
        clock.tick(2)
        progress(10 * MIB)
        clock.tick(5)
        for _attempt in range(200):  # the thread asks every 0.01 s (real time)
            if len(handler.messages) > 1:
                break
            progress._beat._stopped.wait(0.01)
    assert handler.messages[:2] == [
        "restore progress, download+restore: 10.0 MiB of 10.0 MiB (100 %), 5.0 MiB/s",  # the count's own line
        "restore progress, download+restore: 10.0 MiB of 10.0 MiB (100 %), 5.0 MiB/s, no new bytes for 5s"]
    assert progress._beat is None  # stopped with its stage


def test_a_stalled_stream_keeps_the_rate_its_bytes_came_at_and_says_how_long_it_stalled(lines):
    handler, logger = lines
    clock = Clock()
    progress = Progress("backup", None, clock=clock, interval=30, heartbeat=False, log=logger)
    with Stages(progress)("dump_upload", total=4 * GIB, estimated=True):
        clock.tick(100)
        progress(GIB)  # 10.2 MiB/s, and a line (100 s > 30 s)
        clock.tick(29)
        progress.poll()  # not due
        clock.tick(31)
        progress.poll()  # a minute without a byte (pg_dump waiting for a lock)
    assert handler.messages == [
        "backup progress, dump+upload: 1.0 GiB of ~4.0 GiB (25 %), 10.2 MiB/s, ETA 5m 00s",
        "backup progress, dump+upload: 1.0 GiB of ~4.0 GiB (25 %), 10.2 MiB/s, ETA 5m 00s, no new bytes for 1m 00s"]


def test_on_a_terminal_the_line_is_redrawn_at_most_twice_a_second_and_ended_per_stage():
    clock = Clock()
    stream = Tty()
    progress = Progress("restore", stream, clock=clock, heartbeat=False)
    stages = Stages(progress)
    with stages("download_restore", total=100 * MIB):
        clock.tick(2.0)
        progress(50 * MIB, 100 * MIB)
        clock.tick(0.1)
        progress(55 * MIB, 100 * MIB)  # too soon: not drawn
        clock.tick(0.4)
        progress(60 * MIB, 100 * MIB)
    with stages("checks"):
        clock.tick(1.0)
    progress.close()
    drawn = stream.getvalue().split("\r")[1:]
    assert drawn[0] == "restore: download+restore: 50.0 MiB of 100.0 MiB (50 %), 25.0 MiB/s, ETA 2s   "
    assert drawn[1].startswith("restore: download+restore: 60.0 MiB of 100.0 MiB (60 %), ")
    assert drawn[-1].endswith("   \n")  # the stage's last state, then its own line
    assert not any("55.0 MiB" in line for line in drawn)
    assert "checks" not in stream.getvalue()  # a stage that reported nothing draws nothing


def test_a_new_stream_restarts_the_rate():
    clock = Clock()
    progress = Progress("adopt", None, clock=clock, interval=30, heartbeat=False)
    clock.tick(100)
    progress(100 * MIB)
    clock.tick(1)
    progress(MIB)  # the next backup's download: its rate is its own
    clock.tick(1)
    progress(3 * MIB)
    assert progress.text() == "3.0 MiB, 1.5 MiB/s"


def test_stages_add_up_to_no_more_than_the_run_and_keep_their_order():
    clock = Clock()
    stages = Stages(Progress("restore", None, clock=clock, heartbeat=False))
    with stages("prepare"):
        clock.tick(1.2345)
    clock.tick(0.5)  # between stages: part of the run, of no stage
    with stages("download_restore"):
        clock.tick(10.0006)
    with stages("checks"):
        clock.tick(0.1)
    with stages("swap"):
        clock.tick(0.0004)
    with stages("checks"):
        clock.tick(0.2)
    result = stages.result()
    assert list(result) == ["prepare", "download_restore", "checks", "swap"]
    assert result == {"prepare": 1.234, "download_restore": 10.0, "checks": 0.3, "swap": 0.0}
    assert stages.elapsed() == 12.035
    assert sum(result.values()) <= stages.elapsed()
    assert stages_text(result) == "prepare 1.2s, download+restore 10.0s, checks 0.3s, swap 0.0s"


def test_a_failing_stage_is_still_timed_and_left():
    clock = Clock()
    progress = Progress("backup", None, clock=clock, heartbeat=True, interval=30)
    stages = Stages(progress)
    with pytest.raises(ZeroDivisionError):
        with stages("dump_upload"):
            clock.tick(3)
            raise ZeroDivisionError()
    assert stages.result() == {"dump_upload": 3.0}
    assert progress.stage is None and progress._beat is None


def test_floor_seconds_never_rounds_up():
    assert floor_seconds(1.9999) == 1.999
    assert floor_seconds(-0.5) == 0.0


def test_the_default_interval_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv(progress_mod.INTERVAL_VARIABLE, "2.5")
    assert Progress("backup").interval == 2.5
    monkeypatch.setenv(progress_mod.INTERVAL_VARIABLE, "never")
    with pytest.raises(ConfigError):
        Progress("backup")
