# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The range index's pure parts: the archive scanner, the indexer, the index check, ranged decryption, zstd frames
and the balance of ranges over jobs. Archives here are built by a small writer of pg_dump's custom format."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import random

import pytest

from ansible_collections.quankey.backup.plugins.module_utils.errors import IntegrityError, TamperedError, TruncatedError
from ansible_collections.quankey.backup.plugins.module_utils.formats import compression, crypto, pgarchive
from ansible_collections.quankey.backup.plugins.module_utils.workflows import ranged


def _int(value, size=4):
    return bytes([1 if value < 0 else 0]) + abs(value).to_bytes(size, "little")


def _str(text):
    if text is None:
        return _int(-1)
    data = text.encode()
    return _int(len(data)) + data


def archive(blocks, version=(1, 14), order=None):
    """A custom archive: header, TOC (an entry per block plus two without data), then the blocks.

    ``blocks``: ``(dump id, kind, payload)``, kind "data" (payload: rows, one chunk each) or "blobs" (payload: a list
    of (oid, chunks)). ``order``: the order the blocks are written in (default the TOC's).
    """
    head = b"PGDMP" + bytes([version[0], version[1], 0, 4, 8, 1])
    head += bytes([0]) if version >= (1, 15) else _int(0)
    head += b"".join(_int(value) for value in (1, 2, 3, 4, 5, 2026, 0))
    head += _str("db") + _str("15.0") + _str("15.0")
    entries = [(1, False, "ENCODING", 0), (2, False, "TABLE", 1)] + [
        (dump_id, True, "TABLE DATA" if kind == "data" else "BLOBS", 2) for dump_id, kind, _payload in blocks]
    toc = _int(len(entries))
    for dump_id, had_data, desc, section in entries:
        toc += _int(dump_id) + _int(1 if had_data else 0) + _str("0") + _str("0") + _str("tag") + _str(desc)
        toc += _int(section) + b"".join(_str(x) for x in ("defn", None, None, "public", "", "heap"))
        if version >= (1, 16):
            toc += _int(114)
        toc += _str("owner") + _str("false") + _str("1") + _str(None) + bytes([1]) + bytes(8)
    body = []
    for dump_id, kind, payload in (order or blocks):
        if kind == "data":
            body.append(bytes([1]) + _int(dump_id) + b"".join(_int(len(row)) + row for row in payload) + _int(0))
        else:
            los = b"".join(_int(oid) + b"".join(_int(len(c)) + c for c in chunks) + _int(0) for oid, chunks in payload)
            body.append(bytes([3]) + _int(dump_id) + los + _int(0))
    start = len(head) + len(toc)
    offsets, position = [], start
    for block in body:
        offsets.append(position)
        position += len(block)
    return head + toc + b"".join(body), start, offsets


BLOCKS = [
    (10, "data", [b"%d\tname %d\n" % (i, i) for i in range(3000)]),
    (11, "data", []),  # an empty table: its terminator right after the block header
    (12, "data", [b"w" * 65535 + b"\n", b"x" * 131071 + b"\n", b"end\n"]),  # chunk lengths with zero bytes in them
    (13, "blobs", [(16394, [b"\x00" * 70000, b"\x00\x01" * 100]), (16395, [b"\x00\x00\x00\x00\x00\x00"])]),
    (14, "data", [b"after the blobs\n"] * 10),
]


def _scan(data, step):
    scanner = pgarchive.ArchiveScanner()
    starts = []
    for i in range(0, len(data), step):
        starts += scanner.feed(data[i:i + step])
    scanner.finish()
    return scanner, starts


@pytest.mark.parametrize("version", pgarchive.KNOWN_VERSIONS)
@pytest.mark.parametrize("step", [1, 7, 4096, 10 ** 9])
def test_the_scanner_finds_the_toc_end_and_every_block_in_any_pieces(version, step):
    data, toc_end, offsets = archive(BLOCKS, version)
    scanner, starts = _scan(data, step)
    assert scanner.problem is None
    assert scanner.toc_end == toc_end
    assert [entry.dump_id for entry in scanner.entries if entry.had_data] == [10, 11, 12, 13, 14]
    assert scanner.blocks == [[offset, dump_id] for offset, dump_id in zip(offsets, [10, 11, 12, 13, 14])]
    assert starts == offsets


@pytest.mark.parametrize("damage,why", [
    (lambda data, toc_end, offsets: data[:offsets[2] + 3], "ends inside a data block"),
    (lambda data, toc_end, offsets: data[:toc_end - 1], "ends inside its table of contents"),
    (lambda data, toc_end, offsets: data[:offsets[1]] + b"\x07" + data[offsets[1] + 1:], "unknown type 7"),
    (lambda data, toc_end, offsets: data[:5] + b"\x01\x09" + data[7:], "version 1.9"),
    (lambda data, toc_end, offsets: data[:offsets[4]], "1 entries with data have no data block"),
])
def test_what_the_scanner_cannot_index_is_said_not_guessed(damage, why):
    data, toc_end, offsets = archive(BLOCKS)
    scanner, _starts = _scan(damage(data, toc_end, offsets), 1000)
    assert scanner.problem is not None and why in scanner.problem


def test_blocks_out_of_toc_order_leave_no_index():
    data, _toc_end, _offsets = archive(BLOCKS, order=[BLOCKS[1], BLOCKS[0]] + BLOCKS[2:])
    scanner, _starts = _scan(data, 4096)
    assert "is not the next entry with data" in scanner.problem


def _indexed(data, min_bytes, step=5000):
    indexer = pgarchive.RangeIndexer(min_bytes)
    plain = 0
    for i in range(0, len(data), step):
        piece = data[i:i + step]
        cuts = indexer.split(piece)
        if cuts is None:
            continue
        base = indexer.scanner.offset - len(piece) if plain else 0
        for cut in cuts:
            indexer.started(base + cut, 1000 + base + cut)  # compressed offsets: anything increasing will do
        plain = indexer.scanner.offset
    return indexer.index(len(data), 2000 + len(data))


def test_the_indexer_cuts_at_blocks_once_a_range_is_big_enough():
    data, toc_end, offsets = archive(BLOCKS)
    every = _indexed(data, 1)
    assert [item[0] for item in every["ranges"]] == offsets
    assert [item[2] for item in every["ranges"]] == [[10], [11], [12], [13], [14]]
    assert pgarchive.check_index(every)
    few = _indexed(data, 100000)
    assert few["ranges"][0][0] == toc_end  # the archive's start is a frame of its own
    assert [ids for _start, _packed, ids in few["ranges"]] == [[10, 11, 12], [13, 14]]
    assert pgarchive.check_index(few)


def test_an_archive_without_table_data_has_no_index():
    data, _toc_end, _offsets = archive([])
    indexer = pgarchive.RangeIndexer(1)
    assert indexer.split(data) == []
    assert indexer.index(len(data), len(data)) is None and indexer.problem == "it holds no table data"


@pytest.mark.parametrize("change", [
    lambda index: index.update(version=2),
    lambda index: index.update(extra=1),
    lambda index: index.update(ranges=[]),
    lambda index: index["ranges"].reverse(),
    lambda index: index["ranges"][0].__setitem__(2, []),
    lambda index: index["ranges"][0].__setitem__(1, True),
    lambda index: index["ranges"][-1].__setitem__(0, index["archive_bytes"]),
    lambda index: index.update(stream_bytes=-1),
])
def test_a_malformed_index_is_refused(change):
    data, _toc_end, _offsets = archive(BLOCKS)
    index = _indexed(data, 1)
    assert pgarchive.check_index(index)
    change(index)
    assert not pgarchive.check_index(index)


def test_zstd_frames_cut_by_the_writer_decompress_as_one_stream_and_from_each_cut():
    packer = compression.compressor("zstd")
    parts = [os.urandom(5000) + b"abc" * 10000 for _part in range(4)]
    frames = [packer.update(part) + (packer.end_frame() if i < 3 else packer.finalize()) for i, part in enumerate(parts)]
    whole = compression.decompressor("zstd")
    stream = b"".join(frames)
    assert b"".join(whole.update(stream[i:i + 999]) for i in range(0, len(stream), 999)) + whole.finalize() == b"".join(parts)
    single = compression.decompressor("zstd")
    assert single.update(frames[2]) + single.finalize() == parts[2]
    cut = compression.decompressor("zstd")
    cut.update(stream[:-1])
    with pytest.raises(IntegrityError, match="ended before its end marker"):
        cut.finalize()


@pytest.mark.parametrize("segment", [1024, 4096])
def test_a_range_decryptor_gives_exactly_the_bytes_a_whole_read_gives(segment):
    key = os.urandom(32)
    plaintext = os.urandom(9 * segment + 77)
    sealer = crypto.StreamEncryptor(key, segment_size=segment)
    obj = sealer.update(plaintext) + sealer.finalize()
    assert crypto.stream_capacity(segment, len(obj)) == len(plaintext)
    rng = random.Random(7)
    for _try in range(200):
        start = rng.randrange(len(plaintext))
        end = rng.randrange(start + 1, len(plaintext) + 1)
        first, last, final, begin, finish = crypto.segment_span(start, end, segment, len(obj))
        opener = crypto.RangeDecryptor(key, obj[:56], first, last, final)
        piece = obj[begin:finish]
        out = b"".join(opener.update(piece[i:i + 500]) for i in range(0, len(piece), 500)) + opener.finalize()
        assert out[start - first * segment:end - first * segment] == plaintext[start:end]


def test_a_range_decryptor_refuses_moved_cut_or_changed_segments():
    key, segment = os.urandom(32), 1024
    sealer = crypto.StreamEncryptor(key, segment_size=segment)
    obj = sealer.update(os.urandom(5 * segment + 10)) + sealer.finalize()
    sealed = segment + 16
    final = 5

    def opened(first, last, data, final_index=final):
        opener = crypto.RangeDecryptor(key, obj[:56], first, last, final_index)
        return opener.update(data) + opener.finalize()

    with pytest.raises(TamperedError):  # segment 3's bytes read as segment 2's
        opened(2, 2, obj[56 + 3 * sealed:56 + 4 * sealed])
    with pytest.raises(TruncatedError, match="ended at segment 2"):
        opened(2, 3, obj[56 + 2 * sealed:56 + 3 * sealed])
    with pytest.raises(TruncatedError, match="truncated after segment 4"):  # the object cut after segment 4
        opened(4, 4, obj[56 + 4 * sealed:56 + 5 * sealed], final_index=4)
    changed = bytearray(obj[56 + sealed:56 + 2 * sealed])
    changed[10] ^= 1
    with pytest.raises(TamperedError, match="segment 1"):
        opened(1, 1, bytes(changed))
    with pytest.raises(ValueError):
        crypto.segment_span(0, 6 * segment, segment, len(obj))


def test_ranges_are_balanced_over_the_jobs_largest_first():
    assert ranged.assign([100, 10, 60, 50, 5], 2) == [[0, 1, 4], [2, 3]]  # 115 and 110 bytes
    assert ranged.assign([7], 4) == [[0]]
    assert ranged.assign([3, 3, 3], 3) == [[0], [1], [2]]
    assert 1 <= ranged.default_jobs() <= ranged.MAX_AUTO_JOBS
