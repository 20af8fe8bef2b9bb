# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""wal-push and wal-fetch (workflows/wal.py) on the in-memory bucket: the failure paths and what an attacker with
write access to the bucket (and no key) can and cannot do. tests/functional/test_wal.py does it with real WAL."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import hashlib
import json
import os

import pytest

from ansible_collections.quankey.backup.plugins.module_utils import cli, keys
from ansible_collections.quankey.backup.plugins.module_utils.errors import (ConfigError, IntegrityError,
                                                                            RefusedError, StorageError,
                                                                            TamperedError, WrongKeyError)
from ansible_collections.quankey.backup.plugins.module_utils.formats import signing, walobject
from ansible_collections.quankey.backup.plugins.module_utils.workflows import wal, wiring
from ansible_collections.quankey.backup.tests.unit.plugins.module_utils.workflows.fakes import ENV

SEGMENT = 16 * 1024 * 1024
NAMES = ["000000010000000000000001", "000000010000000000000002", "000000010000000000000003",
         "000000010000000000000004"]


def _key(name):
    return "wal/db1/%s/%s" % (name[:8], name)


@pytest.fixture
def pg_wal(tmp_path):
    """A cluster's pg_wal with four segments (different contents, 16 MiB each)."""
    directory = tmp_path / "data" / "pg_wal"
    directory.mkdir(parents=True)
    for number, name in enumerate(NAMES):
        (directory / name).write_bytes((b"%d" % number) * 1024 + os.urandom(4096) + b"\x00" * (SEGMENT - 5120))
    return directory


def _push(settings, store, pg_wal, names=None):
    return [wal.push(settings, str(pg_wal / name), store=store) for name in names or NAMES]


def _fetch(settings, store, name, target, **kwargs):
    kwargs.setdefault("prefetch", 0)
    return wal.fetch(settings, name, str(target), store=store, **kwargs)


def test_a_pushed_segment_is_one_encrypted_signed_object_and_fetches_back(settings, store, pg_wal, tmp_path):
    pushed = _push(settings, store, pg_wal, NAMES[:1])[0]
    assert pushed["status"] == "archived" and pushed["object_key"] == _key(NAMES[0])
    assert store.keys() == [_key(NAMES[0])]
    document, data = walobject.unpack(store.data(_key(NAMES[0])), "k")
    assert document["signature"]["key_id"] == pushed["key_id"] and bytes(data[:4]) == b"QKBK"
    assert document["size_bytes"] == SEGMENT and document["compression"] == "gzip"
    target = tmp_path / "restore" / "RECOVERYXLOG"
    target.parent.mkdir()
    result = _fetch(settings, store, NAMES[0], target)
    assert result["status"] == "restored" and target.read_bytes() == (pg_wal / NAMES[0]).read_bytes()
    assert os.listdir(str(target.parent)) == ["RECOVERYXLOG"]  # no temporary file left behind


def test_a_second_push_compares_the_signed_document_not_the_bytes(settings, store, pg_wal):
    _push(settings, store, pg_wal, NAMES[:1])
    again = wal.push(settings, str(pg_wal / NAMES[0]), store=store)
    assert again["status"] == "already archived"
    (pg_wal / NAMES[0]).write_bytes(b"another content")
    with pytest.raises(RefusedError) as failure:
        wal.push(settings, str(pg_wal / NAMES[0]), store=store)
    assert "WAL file %s was NOT archived" % NAMES[0] in str(failure.value) and "DIFFERENT" in str(failure.value)


def test_an_object_the_attacker_put_first_is_never_taken_for_the_segment(settings, store, pg_wal):
    """Someone with write access but no key puts an object at the segment's key before the archiver: a push of
    the real segment must not report success (it would be lost), whatever the object claims."""
    text = json.dumps(walobject.build_document(
        host="db1", timeline="00000001", name=NAMES[0], object_key=_key(NAMES[0]), size_bytes=SEGMENT,
        checksum=hashlib.sha256((pg_wal / NAMES[0]).read_bytes()).hexdigest(), compression="gzip",
        encryption="aes-256-gcm", key_id=None, envelope={}, created_at="2025-08-09T03:00:00Z"))  # unsigned, claims ours
    store.put_object(_key(NAMES[0]), walobject.pack(json.loads(text), b""))
    with pytest.raises(RefusedError) as failure:
        wal.push(settings, str(pg_wal / NAMES[0]), store=store)
    assert "not a trustworthy archived copy" in str(failure.value) and "not signed" in str(failure.value)


def test_a_failed_upload_is_no_success(settings, store, pg_wal):
    store.inject("put_bytes", before=StorageError("PutObject failed: connection reset"))
    with pytest.raises(StorageError):
        wal.push(settings, str(pg_wal / NAMES[0]), store=store)
    assert store.keys() == []


def test_push_refuses_what_is_not_a_wal_file_and_the_unauthenticated_mode(settings, make_settings, store, tmp_path):
    (tmp_path / "postmaster.pid").write_text("1")
    with pytest.raises(ConfigError, match="is not a file PostgreSQL archives"):
        wal.push(settings, str(tmp_path / "postmaster.pid"), store=store)
    with pytest.raises(ConfigError, match="cannot read WAL file"):
        wal.push(settings, str(tmp_path / NAMES[0]), store=store)
    (tmp_path / NAMES[0]).write_bytes(b"wal")
    cbc = make_settings(BACKUP_ENCRYPTION="aes-256-cbc")
    with pytest.raises(ConfigError, match="cannot archive WAL"):
        wal.push(cbc, str(tmp_path / NAMES[0]), store=store)
    assert store.keys() == []


def test_a_missing_segment_is_the_archive_end_or_a_named_hole(settings, store, pg_wal, tmp_path):
    _push(settings, store, pg_wal)
    with pytest.raises(wal.NotArchivedError):
        _fetch(settings, store, "000000010000000000000009", tmp_path / "x")
    with pytest.raises(wal.NotArchivedError):
        _fetch(settings, store, "00000002.history", tmp_path / "x")
    with pytest.raises(wal.NotArchivedError):  # another timeline's segments do not make a hole
        _fetch(settings, store, "000000020000000000000002", tmp_path / "x")
    store.objects.pop(_key(NAMES[1]))
    with pytest.raises(wal.WalGapError) as failure:
        _fetch(settings, store, NAMES[1], tmp_path / "x")
    assert "%s is MISSING" % NAMES[1] in str(failure.value) and "later segment %s" % NAMES[2] in str(failure.value)
    assert not (tmp_path / "x").exists()


def test_a_partial_or_backup_file_after_the_last_segment_is_no_hole(settings, store, pg_wal, tmp_path):
    _push(settings, store, pg_wal, NAMES[:2])
    (pg_wal / (NAMES[2] + ".partial")).write_bytes(b"partial")
    (pg_wal / (NAMES[1] + ".00000028.backup")).write_bytes(b"START WAL LOCATION")
    wal.push(settings, str(pg_wal / (NAMES[2] + ".partial")), store=store)
    wal.push(settings, str(pg_wal / (NAMES[1] + ".00000028.backup")), store=store)
    with pytest.raises(wal.NotArchivedError):
        _fetch(settings, store, NAMES[2], tmp_path / "x")
    _fetch(settings, store, NAMES[1] + ".00000028.backup", tmp_path / "x")
    assert (tmp_path / "x").read_bytes() == b"START WAL LOCATION"


@pytest.mark.parametrize("attack", ["flip data", "flip document", "move", "resign unknown", "strip signature"])
def test_what_someone_with_write_access_changes_is_refused(settings, store, pg_wal, tmp_path, attack):
    _push(settings, store, pg_wal, NAMES[:2])
    key = _key(NAMES[1])
    blob = bytearray(store.data(key))
    if attack == "flip data":
        blob[-20] ^= 0x01
        store.put_object(key, bytes(blob))
    elif attack == "move":
        store.put_object(key, store.data(_key(NAMES[0])))
    else:
        document, data = walobject.unpack(bytes(blob), "k")
        if attack == "flip document":
            document["checksum_sha256"] = "0" * 64
        elif attack == "resign unknown":
            document = signing.sign_metadata(document, "qks-0000000000000000", os.urandom(32))
        else:
            del document["signature"]
        store.put_object(key, walobject.pack(document, data))
    with pytest.raises(IntegrityError) as failure:
        _fetch(settings, store, NAMES[1], tmp_path / "x")
    words = {"flip data": "decrypt failed", "flip document": "signature is invalid", "move": "another WAL file",
             "resign unknown": "not among the keys given", "strip signature": "is not signed"}[attack]
    assert words in str(failure.value)
    assert not (tmp_path / "x").exists()


def test_a_key_from_another_host_does_not_open_and_host_selects_the_archive(make_settings, settings, store, pg_wal,
                                                                            tmp_path):
    _push(settings, store, pg_wal, NAMES[:1])
    other = make_settings(BACKUP_HOST_ID="db2")
    with pytest.raises(wal.NotArchivedError):
        _fetch(other, store, NAMES[0], tmp_path / "x")
    _fetch(other, store, NAMES[0], tmp_path / "x", host="db1")
    stranger = make_settings(BACKUP_ENCRYPTION_KEY=base64.b64encode(os.urandom(32)).decode(),
                             BACKUP_SIGNING_KEY=base64.b64encode(os.urandom(32)).decode())
    with pytest.raises(IntegrityError, match="not among the keys given"):
        _fetch(stranger, store, NAMES[0], tmp_path / "y")


def test_the_envelope_is_bound_to_the_segment_name(settings, store, pg_wal, tmp_path):
    """Even with a valid signature (a host holding the signing key), a document renamed to another segment fails
    to open its data key: the wrap's binding holds the name."""
    _push(settings, store, pg_wal, NAMES[:1])
    document, data = walobject.unpack(store.data(_key(NAMES[0])), "k")
    document.update(name=NAMES[3], object_key=_key(NAMES[3]))
    context = keys.KeyContext(settings)
    store.put_object(_key(NAMES[3]), walobject.pack(context.sign(document), data))
    with pytest.raises(TamperedError, match="does not open"):
        _fetch(settings, store, NAMES[3], tmp_path / "x")


def test_prefetch_keeps_the_next_segments_verified_in_a_private_spool(settings, store, pg_wal, tmp_path):
    _push(settings, store, pg_wal, NAMES[:3])
    restore = tmp_path / "data" / "restore"
    restore.mkdir()
    first = _fetch(settings, store, NAMES[0], restore / "RECOVERYXLOG", prefetch=4)
    assert first["prefetched"] == NAMES[1:3]
    spool = restore / wal.PREFETCH_DIR / "db1"
    assert sorted(os.listdir(str(spool))) == NAMES[1:3] and os.stat(str(spool)).st_mode & 0o777 == 0o700
    store.objects.clear()  # the next ones come from the spool
    second = _fetch(settings, store, NAMES[1], restore / "RECOVERYXLOG")
    assert second["status"] == "restored from prefetch"
    assert (restore / "RECOVERYXLOG").read_bytes() == (pg_wal / NAMES[1]).read_bytes()
    assert sorted(os.listdir(str(spool))) == NAMES[2:3]


def test_a_prefetch_that_fails_is_only_a_warning(settings, store, pg_wal, tmp_path, caplog):
    _push(settings, store, pg_wal, NAMES[:3])
    blob = bytearray(store.data(_key(NAMES[2])))
    blob[-20] ^= 0x01
    store.put_object(_key(NAMES[2]), bytes(blob))
    first = _fetch(settings, store, NAMES[0], tmp_path / "RECOVERYXLOG", prefetch=3)
    assert first["status"] == "restored" and first["prefetched"] == NAMES[1:2]
    assert "prefetching %s failed" % NAMES[2] in caplog.text
    with pytest.raises(IntegrityError):  # asked for itself, it fails loudly
        _fetch(settings, store, NAMES[2], tmp_path / "RECOVERYXLOG")


def test_a_spool_others_may_enter_is_refused(settings, store, pg_wal, tmp_path):
    _push(settings, store, pg_wal, NAMES[:2])
    spool = tmp_path / "spool"
    (spool / "db1").mkdir(parents=True)
    os.chmod(str(spool / "db1"), 0o755)
    with pytest.raises(ConfigError, match="only its owner may enter it"):
        _fetch(settings, store, NAMES[0], tmp_path / "RECOVERYXLOG", prefetch=1, spool_dir=str(spool))


def test_hybrid_pq_pushes_without_a_private_key(make_settings, store, pg_wal, tmp_path):
    pytest.importorskip("cryptography.hazmat.primitives.asymmetric.mlkem", reason="ML-KEM needs cryptography 47+")
    made = keys.keygen(str(tmp_path / "identity"))
    signing_key = base64.b64encode(os.urandom(32)).decode()
    pusher = make_settings(BACKUP_ENCRYPTION="hybrid-pq", BACKUP_RECIPIENTS=made["public_key"],
                           BACKUP_SIGNING_KEY=signing_key, BACKUP_ENCRYPTION_KEY=None)
    assert wal.push(pusher, str(pg_wal / NAMES[0]), store=store)["encryption"] == "hybrid-pq"
    assert wal.push(pusher, str(pg_wal / NAMES[0]), store=store)["status"] == "already archived"
    with pytest.raises(WrongKeyError, match="no private key"):
        _fetch(pusher, store, NAMES[0], tmp_path / "x")
    restorer = make_settings(BACKUP_ENCRYPTION="hybrid-pq", BACKUP_SIGNING_KEY=signing_key, BACKUP_ENCRYPTION_KEY=None,
                             BACKUP_IDENTITY_FILE=str(tmp_path / "identity"))
    _fetch(restorer, store, NAMES[0], tmp_path / "x")
    assert (tmp_path / "x").read_bytes() == (pg_wal / NAMES[0]).read_bytes()


def test_standby_is_told_by_its_signal_file(tmp_path):
    (tmp_path / "pg_wal").mkdir()
    assert not wal.is_standby(str(tmp_path / "pg_wal" / "RECOVERYXLOG"))
    (tmp_path / "standby.signal").write_text("")
    assert wal.is_standby(str(tmp_path / "pg_wal" / "RECOVERYXLOG"))


@pytest.fixture
def command(store, monkeypatch, tmp_path):
    """``run(*argv)``: the host command's exit status, its settings from fakes.ENV, its store the in-memory one."""
    monkeypatch.setattr(wiring, "open_store", lambda settings, retry_window=None: store)
    env_file = tmp_path / "empty.env"
    env_file.write_text("")
    env_file.chmod(0o600)

    def run(*argv):
        return cli.main(["-q"] + list(argv), environ=dict(ENV, QUANKEY_ENV_FILE=str(env_file)))
    return run


def test_the_commands_exit_as_archive_and_restore_command_must(command, settings, store, pg_wal, tmp_path):
    assert command("wal-push", str(pg_wal / NAMES[0])) == 0
    assert command("wal-push", str(pg_wal / NAMES[0])) == 0
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / NAMES[0]).write_bytes(b"another content")
    assert command("wal-push", str(tmp_path / "other" / NAMES[0])) == 8
    restore = tmp_path / "restore"
    (restore / "pg_wal").mkdir(parents=True)
    target = str(restore / "pg_wal" / "RECOVERYXLOG")
    assert command("wal-fetch", NAMES[0], target, "--prefetch", "0") == 0
    assert command("wal-fetch", NAMES[1], target) == 1  # the archive's end: PostgreSQL's "not found"
    blob = bytearray(store.data(_key(NAMES[0])))
    blob[-20] ^= 0x01
    store.put_object(_key(NAMES[0]), bytes(blob))
    assert command("wal-fetch", NAMES[0], target) == 128  # above 125: PostgreSQL stops recovery
    (restore / "standby.signal").write_text("")
    assert command("wal-fetch", NAMES[0], target) == 6  # a standby retries; it never promotes by itself
    assert command("wal-fetch", "RECOVERYXLOG", target) == 3


def test_every_command_help_renders():
    parser = cli._parser()  # pylint: disable=protected-access
    for name in ("wal-push", "wal-fetch"):
        with pytest.raises(SystemExit):
            parser.parse_args([name, "--help"])
    assert "wal-push" in parser.format_help()


def _mark_ready(pg_wal, names):
    (pg_wal / "archive_status").mkdir(exist_ok=True)
    for name in names:
        (pg_wal / "archive_status" / (name + ".ready")).write_text("")


def test_ready_segments_are_pushed_ahead_and_their_calls_only_check_the_marker(settings, store, pg_wal):
    _mark_ready(pg_wal, NAMES)
    first = wal.push(settings, str(pg_wal / NAMES[0]), store=store, ahead=2)
    assert first["status"] == "archived" and first["pushed_ahead"] == NAMES[1:3]
    assert store.keys() == sorted(_key(name) for name in NAMES[:3])
    assert sorted(os.listdir(str(pg_wal / wal.PUSHED_DIR))) == NAMES[1:3]
    assert os.stat(str(pg_wal / wal.PUSHED_DIR)).st_mode & 0o777 == 0o700
    requests = len(store.requests)
    second = wal.push(settings, str(pg_wal / NAMES[1]), store=store, ahead=2)
    assert second["status"] == "archived ahead" and len(store.requests) == requests  # no S3 request at all
    assert sorted(os.listdir(str(pg_wal / wal.PUSHED_DIR))) == NAMES[2:3]  # the marker is used once


def test_a_marker_that_does_not_match_the_file_is_no_success(settings, store, pg_wal):
    _mark_ready(pg_wal, NAMES)
    wal.push(settings, str(pg_wal / NAMES[0]), store=store, ahead=1)
    (pg_wal / NAMES[1]).write_bytes(b"changed since it was pushed ahead")
    with pytest.raises(RefusedError, match="DIFFERENT"):
        wal.push(settings, str(pg_wal / NAMES[1]), store=store, ahead=0)
    assert not (pg_wal / wal.PUSHED_DIR / NAMES[1]).exists()


def test_a_push_ahead_that_fails_is_a_warning_and_the_segment_is_pushed_when_asked(settings, store, pg_wal, caplog):
    _mark_ready(pg_wal, NAMES)
    store.inject("put_bytes", key=_key(NAMES[1]), before=StorageError("PutObject failed: connection reset"))
    first = wal.push(settings, str(pg_wal / NAMES[0]), store=store, ahead=2)
    assert first["pushed_ahead"] == NAMES[2:3] and "pushing %s ahead failed" % NAMES[1] in caplog.text
    assert wal.push(settings, str(pg_wal / NAMES[1]), store=store, ahead=0)["status"] == "archived"


def test_a_push_whose_answer_was_lost_fails_and_archivings_retry_finds_it_archived(settings, store, pg_wal):
    """The PUT was stored but its answer never came back (past the adapter's own retries): the push must fail (not
    report an archive it cannot vouch for), and PostgreSQL's next archive_command for the file must succeed, by the
    stored object's signed document, without writing again."""
    store.inject("put_bytes", key=_key(NAMES[0]), after=StorageError("connection reset: the answer was lost"))
    with pytest.raises(StorageError):
        wal.push(settings, str(pg_wal / NAMES[0]), store=store, ahead=0)
    stored = store.data(_key(NAMES[0]))
    assert stored is not None
    again = wal.push(settings, str(pg_wal / NAMES[0]), store=store, ahead=0)
    assert again["status"] == "already archived" and store.data(_key(NAMES[0])) == stored
