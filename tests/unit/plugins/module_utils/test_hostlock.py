# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""adapters/hostlock.py: the run lock the scheduled runner's ``flock`` and the backup module share."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import shutil
import stat
import subprocess
import time

import pytest

from ansible_collections.quankey.backup.plugins.module_utils.adapters import hostlock
from ansible_collections.quankey.backup.plugins.module_utils.errors import ConfigError, RefusedError

needs_flock = pytest.mark.skipif(shutil.which("flock") is None, reason="util-linux flock(1) is not installed")


@pytest.fixture
def lock_path(tmp_path):
    return str(tmp_path / "backup.lock")


def _hold_with_flock(path, seconds):
    """The cron runner's way: flock(1) holding ``path`` while it sleeps; returns once the lock is held."""
    ready = path + ".held"
    proc = subprocess.Popen(["flock", path, "sh", "-c", "touch %s; sleep %s" % (ready, seconds)])
    deadline = time.time() + 10
    while not os.path.exists(ready):
        assert proc.poll() is None and time.time() < deadline, "flock(1) did not take the lock"
        time.sleep(0.02)
    return proc


def test_the_lock_is_taken_and_released_and_the_file_is_private(lock_path):
    with hostlock.RunLock(lock_path, 0) as lock:
        assert lock.waited < 1
        with pytest.raises(hostlock.LockBusyError):
            hostlock.RunLock(lock_path, 0).acquire()  # a second open file of this process is refused too
    assert stat.S_IMODE(os.stat(lock_path).st_mode) == 0o600
    with hostlock.RunLock(lock_path, 0):  # released: free again
        pass


@needs_flock
def test_a_run_holding_flock_makes_the_module_wait_then_fail_naming_the_file_and_the_wait(lock_path):
    holder = _hold_with_flock(lock_path, 30)
    try:
        started = time.monotonic()
        with pytest.raises(hostlock.LockBusyError) as busy:
            hostlock.RunLock(lock_path, 0.5).acquire()
        assert 0.4 < time.monotonic() - started < 5
    finally:
        holder.kill()
        holder.wait()
    message = str(busy.value)
    assert message.startswith("lock failed: ")
    assert lock_path in message and "0.5 s" in message and "(lock_wait)" in message
    assert isinstance(busy.value, RefusedError) and busy.value.exit_code == 8


@needs_flock
def test_the_module_gets_the_lock_once_the_scheduled_run_lets_it_go(lock_path):
    holder = _hold_with_flock(lock_path, 0.6)
    try:
        with hostlock.RunLock(lock_path, 20) as lock:
            assert lock.waited > 0.3
            assert holder.poll() == 0  # it finished first
    finally:
        holder.kill()
        holder.wait()


@needs_flock
def test_a_scheduled_run_finds_the_lock_held_by_the_module_and_skips(lock_path):
    with hostlock.RunLock(lock_path, 0):
        # the runner's `flock -n 9` on the same file
        assert subprocess.call(["flock", "-n", lock_path, "true"]) == 1
    assert subprocess.call(["flock", "-n", lock_path, "true"]) == 0


def test_the_wait_is_measured_on_the_clock_it_is_given(lock_path, monkeypatch):
    now = [100.0]
    slept = []

    def sleep(seconds):
        slept.append(seconds)
        now[0] += seconds

    def busy(fd, operation):
        raise OSError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(hostlock.fcntl, "flock", busy)
    with pytest.raises(hostlock.LockBusyError) as exc:
        hostlock.RunLock(lock_path, 1, label="BACKUP_LOCK", clock=lambda: now[0], sleep=sleep).acquire()
    assert sum(slept) == pytest.approx(1.0) and max(slept) <= hostlock.POLL_SECONDS
    assert "(BACKUP_LOCK)" in str(exc.value)


def test_a_lock_in_a_missing_directory_is_a_clear_configuration_error(tmp_path):
    path = str(tmp_path / "missing" / "backup.lock")
    with pytest.raises(ConfigError) as exc:
        hostlock.RunLock(path, 5).acquire()
    assert path in str(exc.value) and "existing directory" in str(exc.value)


@pytest.mark.parametrize("wait, words", [(-1, "give 0 (do not wait) or more seconds"), ("soon", "is not a number")])
def test_a_bad_wait_is_refused_naming_the_option(lock_path, wait, words):
    with pytest.raises(ConfigError) as exc:
        hostlock.RunLock(lock_path, wait)
    assert str(exc.value).startswith("lock_wait ") and words in str(exc.value)


def test_an_empty_path_is_refused(lock_path):
    with pytest.raises(ConfigError):
        hostlock.RunLock("", 5)


def test_check_mode_finds_a_usable_lock_without_taking_or_creating_it(lock_path, tmp_path):
    hostlock.RunLock(lock_path, 0).check()  # missing but creatable
    assert not os.path.exists(lock_path)
    with hostlock.RunLock(lock_path, 0):
        hostlock.RunLock(lock_path, 0).check()  # held by a run: the real run would wait, so fine
    with pytest.raises(ConfigError) as exc:
        hostlock.RunLock(str(tmp_path / "missing" / "backup.lock"), 0).check()
    assert "directory is missing" in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        hostlock.RunLock(str(tmp_path), 0).check()  # a directory, not a file
    assert "not a file" in str(exc.value)
