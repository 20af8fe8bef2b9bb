# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Streaming codecs round-trip and refuse truncated input; the registry is the one list of them."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os

import pytest

from ansible_collections.quankey.backup.plugins.module_utils.formats import compression, magic, openssl_enc
from ansible_collections.quankey.backup.plugins.module_utils.errors import ConfigError, IntegrityError, WrongKeyError

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
    """Backups taken with the former defaults (level 3, two worker threads) stay readable."""
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
    with pytest.raises(IntegrityError, match="starts as none of a zstd stream, a gzip stream or an uncompressed dump"):
        unpack.update(b"garbage garbage")
    short = compression.decompressor("auto")
    short.update(b"\x1f")
    with pytest.raises(IntegrityError, match="only 1 bytes"):
        short.finalize()


# --------------------------------------------------------------------------- the registry

class _XorStream:
    """A made-up codec's stream: its magic, then every byte XOR 0x5A (or back)."""

    def __init__(self, magic, packing):
        self._magic = magic
        self._packing = packing
        self._head = b"" if packing else None

    def update(self, data):
        data = bytes(data)
        if self._packing:
            out, self._magic = self._magic + bytes(byte ^ 0x5A for byte in data), b""
            return out
        if self._head is None:
            self._head = b""
        if len(self._head) < len(self._magic):
            need = len(self._magic) - len(self._head)
            self._head, data = self._head + data[:need], data[need:]
        return bytes(byte ^ 0x5A for byte in data)

    def finalize(self):
        return self._magic if self._packing else b""


class _Xor(compression.Codec):
    """A compression this engine does not have: one class, registered with one line."""

    name = "xor"
    magic = b"QZX1"
    what = "a xor stream"

    def compressor(self, threads=0):
        return _XorStream(self.magic, True)

    def decompressor(self):
        return _XorStream(self.magic, False)


def test_the_settings_choices_are_the_registry():
    assert compression.COMPRESSIONS == tuple(compression.CODECS) == ("zstd", "gzip", "none")
    assert compression.DEFAULT_COMPRESSION in compression.CODECS
    assert [codec.magic for codec in compression.CODECS.values()] == [magic.ZSTD, magic.GZIP, b""]


def test_a_registered_codec_is_sniffed_and_passes_the_cbc_wrong_key_probe_with_no_other_change(monkeypatch):
    archive = b"PGDMP" + os.urandom(3000) + bytes(5000)
    packed = _Xor().compressor().update(archive)
    passphrase, wrong = b"the seed's passphrase", b"another passphrase"
    encryptor = openssl_enc.CbcEncryptor(passphrase, iterations=1)
    sealed = encryptor.update(packed) + encryptor.finalize()

    def sniffed():
        unpack = compression.decompressor("auto")
        return b"".join(unpack.update(packed[i:i + 3]) for i in range(0, len(packed), 3)) + unpack.finalize()

    def opened():
        decryptor = openssl_enc.CbcDecryptor([("WRONG", wrong), ("RIGHT", passphrase)], iterations=1)
        return decryptor.update(sealed) + decryptor.finalize(), decryptor.passphrase_label

    # unregistered, its output is neither a backup's stream nor a plausible first block under any passphrase
    with pytest.raises(IntegrityError, match="starts as none of"):
        sniffed()
    with pytest.raises(WrongKeyError, match="not the start of a zstd stream, a gzip stream or an uncompressed dump"):
        opened()
    monkeypatch.setitem(compression.CODECS, "xor", _Xor())
    assert sniffed() == archive
    assert opened() == (packed, "RIGHT")
    assert openssl_enc.plausible_dump_start(packed[:16]) and not openssl_enc.plausible_dump_start(bytes(16))
    assert compression.decompressor("xor").update(packed) == archive
    with pytest.raises(WrongKeyError, match="or a xor stream"):
        openssl_enc.CbcDecryptor([("WRONG", wrong)], iterations=1).update(sealed)


def test_a_codec_whose_package_is_missing_says_what_to_install(monkeypatch):
    monkeypatch.setattr(compression, "HAS_ZSTANDARD", False)
    for attempt in (lambda: compression.check_compression("zstd"), lambda: compression.compressor("zstd"),
                    lambda: compression.decompressor("zstd")):
        with pytest.raises(ConfigError, match="'zstandard' is required for zstd compression: pip install zstandard "
                                              r"\(or set BACKUP_COMPRESSION to gzip or none\)"):
            attempt()
    with pytest.raises(ConfigError, match="pip install zstandard \\(or set the compression option to gzip or none\\)"):
        compression.check_compression("zstd", "the compression option")
    assert compression.compressor("gzip") is not None


@pytest.mark.parametrize("block, codec", [
    (b"\x1f\x8b\x08\x00" + bytes(12), "gzip"), (b"\x28\xb5\x2f\xfd\x04" + bytes(11), "zstd"),
    (b"PGDMP\x01\x0f\x00" + bytes(8), "none"), (b"SET statement_timeout = 0;"[:16], "none"),
])
def test_each_first_block_is_plausible_for_its_own_codec_only(block, codec):
    assert [name for name, each in compression.CODECS.items() if each.plausible(block)] == [codec]
    assert compression.plausible_start(block)


def test_gzip_with_reserved_flags_or_another_method_is_not_plausible():
    assert not compression.plausible_start(b"\x1f\x8b\x08\xe0" + bytes(12))
    assert not compression.plausible_start(b"\x1f\x8b\x07\x00" + bytes(12))
    assert compression.CODECS["gzip"].sniff(b"\x1f\x8b\x07\x00")  # what the auto reader takes for gzip: the magic


@pytest.mark.parametrize("name", [name for name, codec in compression.CODECS.items() if codec.installed()])
def test_nothing_more_after_the_end_of_a_stream_is_no_error(name):
    """aes-256-cbc holds its last block back: when that block is all padding, the decryptor's last word is b''."""
    packer = compression.compressor(name)
    packed = packer.update(b"x" * 1000) + packer.finalize()
    unpack = compression.decompressor(name)
    assert unpack.update(packed) + unpack.update(b"") + unpack.finalize() == b"x" * 1000
