# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Streaming codecs round-trip and refuse truncated input."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os

import pytest

from ansible_collections.quankey.backup.plugins.module_utils.formats import compression
from ansible_collections.quankey.backup.plugins.module_utils.errors import ConfigError, IntegrityError

DATA = (b"PGDMP" + b"row,text,more text\n" * 50000 + os.urandom(300000)) * 2


def _pack(name, data, step=65536):
    packer = compression.compressor(name)
    out = b"".join(packer.update(data[i:i + step]) for i in range(0, len(data), step))
    return out + packer.finalize()


def _unpack(name, data, step=70000):
    unpacker = compression.decompressor(name)
    out = b"".join(unpacker.update(data[i:i + step]) for i in range(0, len(data), step))
    return out + unpacker.finalize()


@pytest.mark.parametrize("name", compression.COMPRESSIONS)
def test_round_trip(name):
    packed = _pack(name, DATA)
    assert _unpack(name, packed) == DATA
    if name != "none":
        assert len(packed) < len(DATA) * 0.5


@pytest.mark.parametrize("name", ["zstd", "gzip"])
def test_truncated_stream_is_refused(name):
    packed = _pack(name, DATA)
    with pytest.raises(IntegrityError, match="ended before its end marker"):
        _unpack(name, packed[:len(packed) // 2])


def test_unknown_compression_is_a_config_error():
    with pytest.raises(ConfigError, match="choose one of zstd, gzip, none"):
        compression.compressor("lz4")


def test_zstd_with_worker_threads_round_trips():
    packer = compression.compressor("zstd", threads=2)
    packed = b"".join(packer.update(DATA[i:i + 65536]) for i in range(0, len(DATA), 65536)) + packer.finalize()
    assert _unpack("zstd", packed) == DATA


def test_backups_compressed_with_worker_threads_still_decompress():
    """Backups taken with the former default (two worker threads) stay readable."""
    zstandard = pytest.importorskip("zstandard")
    old = zstandard.ZstdCompressor(level=3, threads=2).compressobj()
    packed = b"".join(old.compress(DATA[i:i + 65536]) for i in range(0, len(DATA), 65536)) + old.flush()
    assert _unpack("zstd", packed) == DATA


@pytest.mark.parametrize("name", ["gzip", "zstd", "none"])
def test_auto_detects_what_the_seed_and_we_wrote_from_the_first_bytes(name):
    archive = b"PGDMP" + os.urandom(3000) + bytes(5000)
    pack = compression.compressor(name)
    packed = pack.update(archive) + pack.finalize()
    unpack = compression.decompressor("auto")
    out = b"".join(unpack.update(packed[i:i + 3]) for i in range(0, len(packed), 3)) + unpack.finalize()
    assert out == archive


def test_auto_refuses_what_is_no_backup():
    unpack = compression.decompressor("auto")
    with pytest.raises(IntegrityError, match="neither gzip, zstd, a pg_dump archive nor SQL"):
        unpack.update(b"garbage garbage")
    short = compression.decompressor("auto")
    short.update(b"\x1f")
    with pytest.raises(IntegrityError, match="only 1 bytes"):
        short.finalize()
