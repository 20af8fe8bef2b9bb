# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""restore --pitr's pure parts (workflows/pitr.py): the target and its recovery settings, the base backup chosen for
it, the data directory it accepts, and the writer that puts a checked tar's members into the data directory.
The whole restore runs on the real test bed: tests/functional/test_pitr.py."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import io
import os
import stat
import subprocess
import tarfile

import pytest

from ansible_collections.quankey.backup.plugins.module_utils.catalog import layout
from ansible_collections.quankey.backup.plugins.module_utils.errors import ConfigError, IntegrityError, NotFoundError, RefusedError
from ansible_collections.quankey.backup.plugins.module_utils.formats import basetar
from ansible_collections.quankey.backup.plugins.module_utils.workflows import pitr
from ansible_collections.quankey.backup.tests.unit.plugins.module_utils.workflows.fakes import base_tar

UTC = layout.UTC


def _record(stamp, duration, stop_lsn):
    record = layout.BaseRecord("db1", "cluster_base_%s" % stamp, "base/db1/x.meta", "base/db1/x.tar.enc", 10)
    record.metadata = {"duration_seconds": duration, "stop_lsn": stop_lsn}
    return record


RECORDS = [_record("20261201_120000", 30, "0/9000100"), _record("20261201_060000", 600, "0/5000100"),
           _record("20261201_000000", 30, "0/2000100")]


def test_a_time_target_is_utc_with_microseconds_and_promotes_by_default():
    target = pitr.parse_target("2026-12-01T14:00:00.25+02:00")
    assert target.kind == "time" and target.value == datetime.datetime(2026, 12, 1, 12, 0, 0, 250000, tzinfo=UTC)
    assert target.settings("promote") == [("recovery_target_timeline", "latest"),
                                          ("recovery_target_time", "2026-12-01 12:00:00.250000+00"),
                                          ("recovery_target_inclusive", "on"), ("recovery_target_action", "promote")]


def test_lsn_name_and_latest_targets_give_their_settings():
    assert ("recovery_target_lsn", "0/16B3748") in pitr.parse_target(lsn="0/16b3748").settings("pause")
    named = pitr.parse_target(name="before-migration", inclusive=False, timeline="2").settings("pause")
    assert named == [("recovery_target_timeline", "2"), ("recovery_target_name", "before-migration"),
                     ("recovery_target_inclusive", "off"), ("recovery_target_action", "pause")]
    assert pitr.parse_target().settings("promote") == [("recovery_target_timeline", "latest")]  # the archive's end


@pytest.mark.parametrize("kwargs, message", [
    ({"time_text": "2026-12-01T00:00:00Z", "lsn": "0/1"}, "give one recovery target"),
    ({"lsn": "16B3748"}, "is not a WAL location"),
    ({"lsn": "0/1; DROP"}, "is not a WAL location"),
    ({"name": "x" * 64}, "at most 63 bytes"),
    ({"timeline": "newest"}, "give latest"),
    ({"time_text": "yesterday"}, "is not a time I understand"),
])
def test_a_target_postgresql_would_not_take_is_refused_saying_why(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        pitr.parse_target(**kwargs)


def test_the_base_backup_is_the_newest_that_ended_before_the_target():
    at = datetime.datetime(2026, 12, 1, 12, 0, 20, tzinfo=UTC)  # the 12:00 backup ran until 12:00:30
    assert pitr.choose_base(RECORDS, pitr.Target("time", at)).basename == "cluster_base_20261201_060000"
    later = datetime.datetime(2026, 12, 1, 12, 0, 31, tzinfo=UTC)
    assert pitr.choose_base(RECORDS, pitr.Target("time", later)).basename == "cluster_base_20261201_120000"
    assert pitr.choose_base(RECORDS, pitr.Target("lsn", "0/8FFFFFF")).basename == "cluster_base_20261201_060000"
    assert pitr.choose_base(RECORDS, pitr.Target("name", "x")).basename == "cluster_base_20261201_120000"
    assert pitr.choose_base(RECORDS, pitr.Target("latest")).basename == "cluster_base_20261201_120000"


def test_only_the_base_backups_looked_at_have_their_metadata_read():
    read = []
    at = datetime.datetime(2026, 12, 1, 12, 0, 20, tzinfo=UTC)
    assert pitr.choose_base(RECORDS, pitr.Target("time", at), load=read.append).basename == "cluster_base_20261201_060000"
    assert [record.basename for record in read] == [record.basename for record in RECORDS[:2]]  # newest first, to it
    read.clear()
    pitr.choose_base(RECORDS, pitr.Target("latest"), load=read.append)
    assert read == []  # the newest: its metadata is read once it is chosen (select_base judges it)


def test_a_target_before_every_base_backup_names_the_oldest():
    early = datetime.datetime(2026, 12, 1, 0, 0, 10, tzinfo=UTC)
    with pytest.raises(NotFoundError, match="the oldest, cluster_base_20261201_000000, ended at 2026-12-01T00:00:30Z"):
        pitr.choose_base(RECORDS, pitr.Target("time", early))
    with pytest.raises(NotFoundError, match="ends at 0/2000100"):
        pitr.choose_base(RECORDS, pitr.Target("lsn", "0/1000000"))
    with pytest.raises(NotFoundError, match="take one with"):
        pitr.choose_base([], pitr.Target("latest"))


def test_only_a_new_or_empty_data_directory_is_accepted(tmp_path):
    assert pitr.check_data_dir(str(tmp_path / "new")) == str(tmp_path / "new")
    assert pitr.check_data_dir(str(tmp_path)) == str(tmp_path)
    (tmp_path / "PG_VERSION").write_text("15\n")
    with pytest.raises(RefusedError, match="is not empty .it holds PG_VERSION."):
        pitr.check_data_dir(str(tmp_path))
    with pytest.raises(RefusedError, match="is not a directory"):
        pitr.check_data_dir(str(tmp_path / "PG_VERSION"))
    with pytest.raises(ConfigError, match="its parent directory .* does not exist"):
        pitr.check_data_dir(str(tmp_path / "missing" / "data"))
    with pytest.raises(ConfigError, match="needs --data-dir"):
        pitr.check_data_dir("")
    assert sorted(os.listdir(tmp_path)) == ["PG_VERSION"]


def _extract(data, root, chunk=4096, queued=False):
    """As run_restore_pitr extracts (``queued``: the check and the writes each on a thread of its own, as there)."""
    writer = pitr.DataDirWriter(str(root))
    sink = pitr.QueuedSink(writer, depth=4) if queued else writer
    checker = basetar.TarChecker(sink=sink)
    feeding = pitr.QueuedSink(checker, depth=2, methods=("feed",)) if queued else checker
    try:
        for pos in range(0, len(data), chunk):
            assert feeding.feed(data[pos:pos + chunk]) is True
        if queued:
            feeding.close()
        summary = checker.finish()
        sink.close()
    finally:
        if queued:
            feeding.close(quiet=True)
            sink.close(quiet=True)
    return summary, writer


@pytest.mark.parametrize("queued", [False, True])
@pytest.mark.parametrize("chunk", [1000, 512, 10 ** 6])
def test_a_checked_tar_is_written_member_by_member_private_to_its_owner(tmp_path, chunk, queued):
    files = {"PG_VERSION": b"15\n", "base/1/1259": bytes(range(256)) * 64, "global/pg_control": b"c" * 8192}
    summary, writer = _extract(base_tar(files), tmp_path, chunk, queued)
    assert summary["manifest"]["files"] == 4  # and backup_label
    for path, data in files.items():
        assert (tmp_path / path).read_bytes() == data
        assert stat.S_IMODE(os.stat(tmp_path / path).st_mode) == 0o600
    assert (tmp_path / "backup_label").read_bytes().startswith(b"START WAL LOCATION")
    assert (tmp_path / "backup_manifest").exists() and (tmp_path / "pg_wal").is_dir()
    assert stat.S_IMODE(os.stat(tmp_path / "base" / "1").st_mode) == 0o700
    assert writer.files == 5 and writer.bytes == sum(len(item) for item in files.values()) + len(
        (tmp_path / "backup_label").read_bytes()) + len((tmp_path / "backup_manifest").read_bytes())


@pytest.mark.parametrize("queued", [False, True])
def test_a_tar_whose_file_differs_from_its_manifest_is_caught_once_written(tmp_path, queued):
    changed = base_tar(in_tar={"base/1/1259": b"forged" * 100})
    with pytest.raises(IntegrityError, match="base/1/1259 is 600 bytes in the tar"):
        _extract(changed, tmp_path, queued=queued)  # the caller (run_restore_pitr) then removes what was written


def test_a_link_member_is_refused_but_a_linked_pg_wal_becomes_a_directory(tmp_path):
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, target in (("pg_wal", "/elsewhere/pg_wal"), ("pg_tblspc/16384", "/etc")):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    writer = pitr.DataDirWriter(str(tmp_path))
    checker = basetar.TarChecker(sink=writer)
    with pytest.raises(IntegrityError, match="holds pg_tblspc/16384 as a link"):
        checker.feed(out.getvalue())
    assert (tmp_path / "pg_wal").is_dir() and not (tmp_path / "pg_wal").is_symlink()
    assert not os.path.lexists(tmp_path / "pg_tblspc" / "16384")


@pytest.mark.parametrize("queued", [False, True])
def test_a_file_already_there_is_never_written_through(tmp_path, queued):
    (tmp_path / "PG_VERSION").symlink_to(tmp_path / "outside")
    with pytest.raises(OSError):
        _extract(base_tar({"PG_VERSION": b"15\n"}), tmp_path, queued=queued)
    assert not (tmp_path / "outside").exists()


def test_a_queued_sinks_failure_reaches_the_caller_and_stops_the_writes_after_it(tmp_path):
    calls = []

    class Failing:
        def begin(self, path, _kind):
            calls.append(path)
            if path == "second":
                raise OSError(28, "No space left on device")

        def data(self, chunk):
            calls.append(bytes(chunk))

        def end(self):
            calls.append("end")

        def close(self):
            calls.append("close")

    sink = pitr.QueuedSink(Failing(), depth=2)
    sink.begin("first", basetar.REGULAR)
    sink.data(b"one")
    sink.end()
    sink.begin("second", basetar.REGULAR)
    with pytest.raises(OSError, match="No space left"):  # by a later call, or at the latest by close
        for number in range(1000):
            sink.data(b"lost %d" % number)
        sink.close()
    sink.close(quiet=True)  # cleaning up after it: no second raise
    assert calls[:5] == ["first", b"one", "end", "second", "close"] and len(calls) == 5  # in order; nothing after
    with pytest.raises(OSError):
        sink.close()  # asked again without quiet: still the failure


def _script(spool):
    for name in ("ask", "ready", "missing", "failed"):
        (spool / name).mkdir(parents=True)
    path = spool / "restore_command.sh"
    path.write_text(pitr.FETCH_SCRIPT % {"pid": os.getpid(), "spool": str(spool), "stop": pitr.STOP_RECOVERY})
    return path


def _ask(script, name, target):
    return subprocess.run(["/bin/sh", str(script), name, str(target)], capture_output=True, text=True, timeout=30,
                          check=False)


def test_the_restore_command_script_answers_what_the_feeder_left_in_the_spool(tmp_path):
    spool = tmp_path / "spool"
    script = _script(spool)
    segment = "000000010000000000000003"
    (spool / "alive").write_text("")
    (spool / "ready" / segment).write_bytes(b"wal" * 100)
    (spool / "missing" / "00000002.history").write_text("")
    (spool / "failed" / "000000010000000000000004").write_text("WAL segment 000000010000000000000004 is MISSING\n")
    done = _ask(script, segment, tmp_path / "RECOVERYXLOG")
    assert done.returncode == 0 and (tmp_path / "RECOVERYXLOG").read_bytes() == b"wal" * 100
    assert (spool / "ask" / segment).exists()  # what it asked the feeder for
    assert _ask(script, "00000002.history", tmp_path / "RECOVERYHISTORY").returncode == 1  # not archived
    failed = _ask(script, "000000010000000000000004", tmp_path / "RECOVERYXLOG")
    assert failed.returncode == pitr.STOP_RECOVERY and "is MISSING" in failed.stderr  # recovery stops, not ends
    for bad in ("../../etc/passwd", ".hidden", ""):
        assert _ask(script, bad, tmp_path / "x").returncode == pitr.STOP_RECOVERY
    (spool / "alive").unlink()  # the restore process is gone (killed, or it left a paused server)
    gone = _ask(script, "000000010000000000000009", tmp_path / "RECOVERYXLOG")
    assert gone.returncode == pitr.STOP_RECOVERY and "no longer running" in gone.stderr  # no early promotion
    assert _ask(script, "00000003.history", tmp_path / "RECOVERYHISTORY").returncode == 1  # a timeline not taken


def test_the_configuration_is_the_data_directorys_own_else_the_one_given_else_none(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    given = tmp_path / "postgresql.conf"
    given.write_text("shared_buffers = 1GB\n")
    assert pitr._configuration(str(data), str(given), "99") == str(given)  # pylint: disable=protected-access
    with pytest.raises(ConfigError, match="--config-file .* does not exist"):
        pitr._configuration(str(data), str(tmp_path / "nowhere.conf"), "99")  # pylint: disable=protected-access
    assert pitr._configuration(str(data), None, "99") == ""  # no /etc/postgresql/99: PostgreSQL's defaults
    (data / "postgresql.conf").write_text("")
    assert pitr._configuration(str(data), None, "99") is None  # its own


def test_the_restored_tree_is_flushed_with_or_without_syncfs(tmp_path, monkeypatch):
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "1").write_bytes(b"x")
    pitr._fsync_tree(str(tmp_path))  # pylint: disable=protected-access  # syncfs(2) here
    flushed = []
    monkeypatch.setattr(pitr, "_LIBC", {})  # looked up again, in:
    monkeypatch.setattr(pitr.ctypes, "CDLL", lambda *args, **kwargs: object())  # a C library without syncfs
    monkeypatch.setattr(pitr.os, "fsync", flushed.append)
    pitr._fsync_tree(str(tmp_path))  # pylint: disable=protected-access
    assert len(flushed) == 3  # the file, then each directory


class _Feeder:
    def restore_command(self):
        return "/bin/sh /spool/restore_command.sh %f %p"


def _options(tmp_path, major):
    server = pitr.Server("/usr/lib/postgresql/%s/bin" % major, str(tmp_path / "data"), "postgres", None,
                         str(tmp_path), 5999)
    return dict(pitr._recovery_options(server, str(tmp_path), None, _Feeder(), pitr.Target("latest"),  # pylint: disable=protected-access
                                       "promote", True, None, major))


def test_the_server_flushes_the_restored_directory_with_one_syncfs_where_it_can(tmp_path, monkeypatch):
    # PostgreSQL 14 and later, on a C library with syncfs(2) (Linux): its start flushes with one syncfs, not a fsync
    # of each of the files restore --pitr has just flushed itself
    assert _options(tmp_path, "15")["recovery_init_sync_method"] == "syncfs"
    assert "recovery_init_sync_method" not in _options(tmp_path, "13")  # no such setting before 14: it would not start
    monkeypatch.setattr(pitr, "_LIBC", {})
    monkeypatch.setattr(pitr.ctypes, "CDLL", lambda *args, **kwargs: object())  # no syncfs here: PostgreSQL's default
    assert "recovery_init_sync_method" not in _options(tmp_path, "15")


def test_each_restored_file_is_written_whole_and_its_writeback_begun(tmp_path, monkeypatch):
    begun = []
    monkeypatch.setattr(pitr, "_start_writeback", begun.append)
    writer = pitr.DataDirWriter(str(tmp_path))
    writer.begin("base", basetar.DIRECTORY)
    writer.begin("base/1", basetar.REGULAR[0])
    writer.data(b"a" * 10)
    writer.data(b"b" * 5)
    writer.end()
    assert (tmp_path / "base" / "1").read_bytes() == b"a" * 10 + b"b" * 5
    assert len(begun) == 1  # one file: its writeback asked for once, at its end


def test_a_second_restore_into_the_same_directory_is_refused_while_the_first_holds_it(tmp_path):
    first = pitr._claim(str(tmp_path))  # pylint: disable=protected-access
    try:
        with pytest.raises(RefusedError, match="is being restored into by another run"):
            pitr._claim(str(tmp_path))  # pylint: disable=protected-access
        (tmp_path / "PG_VERSION").write_text("15\n")  # what the first one writes
    finally:
        os.close(first)
    with pytest.raises(RefusedError, match="is not empty"):  # the lock is free, but the directory is not empty
        pitr._claim(str(tmp_path))  # pylint: disable=protected-access
    assert sorted(os.listdir(tmp_path)) == ["PG_VERSION"]


@pytest.mark.parametrize("metadata, ahead, names", [
    # one segment: start and stop in it
    ({"start_wal_file": "000000010000000000000005", "stop_lsn": "0/5000138"}, 8, ["000000010000000000000005"]),
    # a stop exactly at a segment's start holds no byte of that segment
    ({"start_wal_file": "000000010000000000000005", "stop_lsn": "0/7000000"}, 8,
     ["000000010000000000000005", "000000010000000000000006"]),
    # across an XXXXXXXX boundary, on timeline 3
    ({"start_wal_file": "0000000300000000000000FE", "stop_lsn": "1/01000028"}, 8,
     ["0000000300000000000000FE", "0000000300000000000000FF", "000000030000000100000000", "000000030000000100000001"]),
    # a base backup over many segments: at most ``ahead``
    ({"start_wal_file": "000000010000000000000005", "stop_lsn": "0/40000000"}, 3,
     ["000000010000000000000005", "000000010000000000000006", "000000010000000000000007"]),
    # metadata without a stop: the first only; without a start, or no read-ahead: nothing
    ({"start_wal_file": "000000010000000000000005"}, 8, ["000000010000000000000005"]),
    ({"stop_lsn": "0/5000138"}, 8, []),
    ({"start_wal_file": "000000010000000000000005", "stop_lsn": "0/5000138"}, 0, []),
])
def test_the_wal_read_during_the_download_is_the_base_backups_own(metadata, ahead, names):
    assert pitr.warm_names(metadata, ahead) == names
