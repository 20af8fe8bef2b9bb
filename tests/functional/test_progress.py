# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Progress on the real test bed, as cron sees it: the host command's stderr is not a terminal, so it logs a
progress line every QUANKEY_PROGRESS_LOG_SECONDS (30 s; shortened here), and its results say how long each stage
took."""

import json
import os
import re
import time

import pytest

from hostcommand import new_name, run_cli

LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ INFO (\w+) progress, ([\w+]+): (.*)$")


@pytest.fixture
def env(testbed, source):
    values = testbed.backup_env(source)
    values["S3_PREFIX"] = new_name("progress")
    values["BACKUP_HOST_ID"] = "db1"
    values["QUANKEY_PROGRESS_LOG_SECONDS"] = "0.05"
    return values


def _timed(env, *args):
    begun = time.monotonic()
    proc = run_cli(env, *args, check=0)
    return proc, time.monotonic() - begun


def _progress(stderr, command, stage):
    found = [LINE.match(line) for line in stderr.splitlines()]
    return [match.group(3) for match in found if match and match.group(1) == command and match.group(2) == stage]


def _stages_fit(result, wall, names):
    assert list(sorted(result["stage_seconds"])) == sorted(names)
    assert all(seconds >= 0 for seconds in result["stage_seconds"].values())
    assert sum(result["stage_seconds"].values()) <= result["duration_seconds"] <= wall


def test_a_backup_and_a_restore_off_a_terminal_log_progress_and_time_their_stages(testbed, source, env):
    proc, wall = _timed(env, "backup", "--json")
    taken = json.loads(proc.stdout)
    dumped = [text for text in _progress(proc.stderr, "backup", "dump+upload")
              if not text.startswith("running for ")]  # the heartbeat's, before pg_dump's first bytes
    assert dumped, proc.stderr
    estimate = re.compile(r"^[\d.]+ [KMG]?i?B( of ~[\d.]+ [KMG]?i?B \(\d+ %\)| \(past the ~[\d.]+ [KMG]?i?B estimated\)), "
                          r"[\d.]+ [KMG]?i?B/s")
    assert all(estimate.match(text) for text in dumped), dumped
    _stages_fit(taken, wall, ["prepare", "dump_upload", "commit"])
    assert taken["stage_seconds"]["dump_upload"] > 0

    target = new_name("progress_restored")
    proc, wall = _timed(env, "restore", "--target-db", target, "--json")
    restored = json.loads(proc.stdout)
    downloaded = [text for text in _progress(proc.stderr, "restore", "download+restore")
                  if not text.startswith("running for ")]
    assert downloaded, proc.stderr
    exact = re.compile(r"^[\d.]+ [KMG]?i?B of [\d.]+ [KMG]?i?B \(\d+ %\)")  # the object's size is known: no ~
    assert all(exact.match(text) for text in downloaded), downloaded
    _stages_fit(restored, wall, ["prepare", "schema", "download_restore", "indexes", "checks", "swap"])
    assert restored["jobs"] == min(os.cpu_count(), 4) and restored["integrity"] == "segments"  # workflows/ranged.py

    proc, wall = _timed(env, "verify")
    assert re.search(r"^  stages: prepare [\d.]+s, download\+verify [\d.]+s$", proc.stdout, re.M), proc.stdout


def test_the_default_interval_keeps_a_short_run_quiet(testbed, source, env):
    del env["QUANKEY_PROGRESS_LOG_SECONDS"]
    proc, _wall = _timed(env, "backup")
    assert " progress, " not in proc.stderr  # 30 s between lines: a run of seconds logs none
    assert re.search(r"^  stages: prepare [\d.]+s, dump\+upload [\d.]+s, commit [\d.]+s$", proc.stdout, re.M), proc.stdout


def test_a_bad_interval_is_refused_before_anything_is_done(testbed, source, env):
    env["QUANKEY_PROGRESS_LOG_SECONDS"] = "often"
    proc = run_cli(env, "backup", check=3)  # a configuration error
    assert "QUANKEY_PROGRESS_LOG_SECONDS is 'often'" in proc.stderr
