# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Encryption formats version 1 and 2 of quankey.backup (specified in docs/FORMAT.md).

Envelope encryption: every backup gets a fresh random 32-byte data key. The
data object holds only the encrypted stream (a 56-byte header followed by
AES-256-GCM segments, the STREAM construction); the data key, wrapped with the
user's master key (``BACKUP_ENCRYPTION_KEY``), lives in the backup's metadata.

Format version 2 changes only the envelope: the wrap's associated data also
holds the backup's identity (:func:`backup_binding`: source host id, database
and backup name), so metadata copied under another backup's name does not
open. Version 1 envelopes are still read; the data object is the same in both.

The streaming classes keep at most one segment in memory. Plaintext returned by
:meth:`StreamDecryptor.update` is authenticated segment by segment, but the
stream as a whole (its end) is only proven by :meth:`StreamDecryptor.finalize`.

Messages never contain key material: only key ids, lengths, offsets and names.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import binascii
import hashlib
import hmac
import os
import re
import struct
import traceback
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from ..errors import ConfigError, IntegrityError, TamperedError, TruncatedError, WrongKeyError
from . import magic

try:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF
    HAS_CRYPTOGRAPHY = True
    CRYPTOGRAPHY_IMPORT_ERROR = None
except ImportError:
    HAS_CRYPTOGRAPHY = False
    CRYPTOGRAPHY_IMPORT_ERROR = traceback.format_exc()

# Older cryptography (e.g. 38, in Debian 12) takes only ``bytes`` as AEAD data;
# newer versions take any buffer, which lets segments be sealed without a copy.
_AEAD_TAKES_BUFFERS = False
if HAS_CRYPTOGRAPHY:
    try:
        AESGCM(bytes(32)).encrypt(bytes(12), memoryview(bytearray(1)), memoryview(b""))
        _AEAD_TAKES_BUFFERS = True
    except TypeError:
        pass

MAGIC = magic.QUANKEY
FORMAT_VERSION = 1
SUITE_AES_256_GCM_STREAM = 1
HEADER_SIZE = 56
TAG_SIZE = 16
NONCE_SIZE = 12
SALT_SIZE = 16
KEY_SIZE = 32
COMMITMENT_SIZE = 32
DEFAULT_SEGMENT_SIZE_LOG2 = 20
DEFAULT_SEGMENT_SIZE = 1 << DEFAULT_SEGMENT_SIZE_LOG2
MIN_SEGMENT_SIZE_LOG2 = 10
MAX_SEGMENT_SIZE_LOG2 = 24
ENCRYPTION_NAME = "aes-256-gcm"
ENVELOPE_TYPE = "aes-256-gcm-hkdf-sha256"  # format version 1: no backup binding
ENVELOPE_TYPE_V2 = "aes-256-gcm-hkdf-sha256-v2"  # format version 2: the backup's identity in the wrap's aad
KEY_ID_PREFIX = "qk1-"
MASTER_KEY_NAME = "BACKUP_ENCRYPTION_KEY"

_KEY_ID_LABEL = b"quankey-backup/v1 key-id\x00"
_WRAP_INFO = b"quankey-backup/v1 key-wrap"
_WRAP_AAD_PREFIX = b"quankey-backup/v1 key-wrap\x00"
_WRAP_INFO_V2 = b"quankey-backup/v2 key-wrap"
_WRAP_AAD_PREFIX_V2 = b"quankey-backup/v2 key-wrap\x00"
_BINDING_LABEL = b"quankey-backup/v2 backup\x00"
_BINDING_PARTS = ("host", "database", "name")
_BINDING_PART_MAX = 0xFFFF  # the length of each part is a u16
_PAYLOAD_INFO = b"quankey-backup/v1 payload"
_COMMITMENT_INFO = b"quankey-backup/v1 commitment"
_WRAPPED_KEY_SIZE = KEY_SIZE + TAG_SIZE
_KEY_ID_RE = re.compile(r"\Aqk1-[0-9a-f]{16}\Z")
_HEADER_PREFIX = struct.Struct(">4sBBBB")  # magic, version, suite, log2 segment size, reserved
# The envelope types of both modes, by format version (recipients.ENVELOPE_TYPE and ENVELOPE_TYPE_V2 for hybrid-pq;
# spelled out here because recipients imports this module).
_HYBRID_PQ_TYPES = {"hybrid-pq-x25519-mlkem768-hkdf-sha256": 1, "hybrid-pq-x25519-mlkem768-hkdf-sha256-v2": 2}
_MASTER_KEY_TYPES = {ENVELOPE_TYPE: 1, ENVELOPE_TYPE_V2: 2}
_OPENSSL_ENC_TYPE = "openssl-enc-pbkdf2-sha256"  # openssl_enc.ENVELOPE_TYPE: the passphrase is the key, nothing to bind
_MASTER_KEY_HINT = "generate one with `openssl rand -base64 32` and set it (e.g. in /etc/quankey/backup.env)"
_CRYPTOGRAPHY_MISSING = "the Python package 'cryptography' is required: pip install cryptography"

BytesLike = Union[bytes, bytearray, memoryview]
MasterKeys = Union[BytesLike, Sequence[BytesLike]]


# --------------------------------------------------------------------------- helpers

def require_cryptography() -> None:
    """Raise ConfigError when the optional ``cryptography`` package is missing."""
    if not HAS_CRYPTOGRAPHY:
        raise ConfigError(_CRYPTOGRAPHY_MISSING)


def check_key(value: BytesLike, what: str) -> bytes:
    """Return ``value`` as bytes if it is a 32-byte key, else raise TypeError or ValueError (a caller bug)."""
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError("%s must be bytes, not %s" % (what, type(value).__name__))
    value = bytes(value)
    if len(value) != KEY_SIZE:
        raise ValueError("%s must be %d bytes, got %d" % (what, KEY_SIZE, len(value)))
    return value


def hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    """HKDF-SHA256 with a 32-byte output."""
    return HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=salt, info=info).derive(ikm)


def b64_text(data: bytes) -> str:
    """Standard base64 with padding, as text."""
    return base64.b64encode(data).decode("ascii")


def _random_or_given(given: Optional[BytesLike], size: int, what: str) -> bytes:
    """Return ``given`` (test vectors only) after a length check, else ``size`` random bytes."""
    if given is None:
        return os.urandom(size)
    given = bytes(given)
    if len(given) != size:
        raise ValueError("%s must be %d bytes, got %d" % (what, size, len(given)))
    return given


def _aead_data(chunk: BytesLike) -> BytesLike:
    """Pass a buffer to AES-GCM as is when the installed cryptography allows it, else as bytes."""
    return chunk if _AEAD_TAKES_BUFFERS else bytes(chunk)


def _segment_nonce(index: int, final: bool) -> bytes:
    """Nonce of segment ``index``: 3 zero bytes, the index as u64 big-endian, then 1 if final else 0."""
    return b"\x00\x00\x00" + struct.pack(">QB", index, 1 if final else 0)


def _derive_stream_keys(data_key: bytes, salt: bytes) -> Tuple[bytes, bytes]:
    """Return (payload key, key commitment) for a data key and a stream salt."""
    return hkdf(data_key, salt, _PAYLOAD_INFO), hkdf(data_key, salt, _COMMITMENT_INFO)


def _segment_size_log2(segment_size: int) -> int:
    """Return log2 of an allowed segment size, else raise ValueError."""
    if isinstance(segment_size, bool) or not isinstance(segment_size, int) or segment_size <= 0 or segment_size & (segment_size - 1):
        raise ValueError("segment_size must be a power of two between 2**%d and 2**%d" % (MIN_SEGMENT_SIZE_LOG2, MAX_SEGMENT_SIZE_LOG2))
    log2 = segment_size.bit_length() - 1
    if not MIN_SEGMENT_SIZE_LOG2 <= log2 <= MAX_SEGMENT_SIZE_LOG2:
        raise ValueError("segment_size must be a power of two between 2**%d and 2**%d" % (MIN_SEGMENT_SIZE_LOG2, MAX_SEGMENT_SIZE_LOG2))
    return log2


def _not_our_format(prefix: bytes) -> IntegrityError:
    """Build the error for bytes that do not start with MAGIC, naming known foreign formats (magic.py)."""
    known = magic.identify(prefix)
    if known is not None:
        return IntegrityError("not a quankey-backup encrypted object: it is %s%s" % (
            known.describe(), ", which its metadata does not record: the object was replaced" if known.encrypted else ""))
    return IntegrityError("not a quankey-backup encrypted object: it does not start with the magic bytes %r" % (MAGIC,))


def _parse_header(header: bytes) -> Dict[str, Any]:
    """Check the 56 header bytes and return their fields; raise IntegrityError if they are not format v1."""
    if not header.startswith(MAGIC):
        raise _not_our_format(header)
    magic, version, suite, log2, reserved = _HEADER_PREFIX.unpack_from(header)
    if version != FORMAT_VERSION:
        raise IntegrityError("encrypted object has format version %d: this decryptor reads only version %d" % (version, FORMAT_VERSION))
    if suite != SUITE_AES_256_GCM_STREAM:
        raise IntegrityError("encrypted object uses cipher suite %d: this decryptor supports only suite %d (AES-256-GCM STREAM)"
                             % (suite, SUITE_AES_256_GCM_STREAM))
    if not MIN_SEGMENT_SIZE_LOG2 <= log2 <= MAX_SEGMENT_SIZE_LOG2:
        raise IntegrityError("encrypted object header gives segment size 2**%d: allowed are 2**%d to 2**%d"
                             % (log2, MIN_SEGMENT_SIZE_LOG2, MAX_SEGMENT_SIZE_LOG2))
    if reserved != 0:
        raise IntegrityError("encrypted object header has reserved byte 0x%02x: expected 0x00" % reserved)
    start = _HEADER_PREFIX.size
    return {
        "magic": magic,
        "version": version,
        "suite": suite,
        "segment_size_log2": log2,
        "segment_size": 1 << log2,
        "salt": header[start:start + SALT_SIZE],
        "commitment": header[start + SALT_SIZE:HEADER_SIZE],
    }


def _truncated_header(received: bytes) -> IntegrityError:
    """Error for an object shorter than a header: truncated if it starts like ours, else foreign."""
    if not received:
        return TruncatedError("encrypted object is empty: expected at least a %d-byte header" % HEADER_SIZE)
    if MAGIC.startswith(received[:len(MAGIC)]):
        return TruncatedError("encrypted object is truncated inside its header (%d of %d bytes): the object is incomplete" % (len(received), HEADER_SIZE))
    return _not_our_format(received)


# --------------------------------------------------------------------------- master key

def parse_master_key(text: Optional[Union[str, bytes]], name: str = MASTER_KEY_NAME) -> bytes:
    """Decode a master key given as base64 of exactly 32 bytes (``openssl rand -base64 32``).

    Whitespace anywhere is ignored; anything else must be strict standard base64.
    Raises ConfigError with a one-line, value-free message otherwise.
    """
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("ascii")
        except UnicodeDecodeError:
            text = "\x00"  # forces the base64 error below without echoing the value
    if text is None or not "".join(str(text).split()):
        raise ConfigError("%s is not set: %s" % (name, _MASTER_KEY_HINT))
    compact = "".join(str(text).split())
    key = None
    try:
        key = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        pass  # raised below, outside the handler, so no chained traceback can carry the value
    if key is None:
        raise ConfigError("%s is not valid base64: %s" % (name, _MASTER_KEY_HINT))
    if len(key) != KEY_SIZE:
        raise ConfigError("%s decodes to %d bytes instead of %d: %s" % (name, len(key), KEY_SIZE, _MASTER_KEY_HINT))
    return key


def key_id(master_key: bytes) -> str:
    """Non-secret fingerprint of a master key: ``qk1-`` + 16 hex chars of SHA-256(label + key)."""
    master_key = check_key(master_key, "master key")
    return KEY_ID_PREFIX + hashlib.sha256(_KEY_ID_LABEL + master_key).hexdigest()[:16]


# --------------------------------------------------------------------------- envelope

def new_data_key() -> bytes:
    """A fresh random 32-byte data key for one backup."""
    return os.urandom(KEY_SIZE)


def backup_binding(host: str, database: str, name: str) -> bytes:
    """The backup's identity as bound into format-v2 envelopes (the wrap's and every hybrid-pq slot's aad).

    ``b"quankey-backup/v2 backup\\x00"`` followed by u16be(length) || UTF-8 bytes of the source host id,
    the database name and the backup name, in that order. Each must be a non-empty str of at most 65535
    UTF-8 bytes, else TypeError or ValueError (a caller bug). They are the source backup's, as given by
    where it is stored, not the machine restoring it; the bucket and the prefix are not part of it.
    """
    out = [_BINDING_LABEL]
    for what, value in zip(_BINDING_PARTS, (host, database, name)):
        if not isinstance(value, str):
            raise TypeError("backup binding: %s must be a str, not %s" % (what, type(value).__name__))
        encoded = None
        try:
            encoded = value.encode("utf-8")
        except UnicodeEncodeError:
            pass  # raised below, outside the handler
        if encoded is None:
            raise ValueError("backup binding: %s is not encodable as UTF-8 (it holds a lone surrogate)" % what)
        if not encoded:
            raise ValueError("backup binding: %s is empty" % what)
        if len(encoded) > _BINDING_PART_MAX:
            raise ValueError("backup binding: %s is %d UTF-8 bytes, at most %d are allowed" % (what, len(encoded), _BINDING_PART_MAX))
        out.append(struct.pack(">H", len(encoded)) + encoded)
    return b"".join(out)


def check_binding(binding: Any) -> bytes:
    """Return ``binding`` as bytes if it is what :func:`backup_binding` makes, else raise TypeError or ValueError (a caller bug)."""
    if not isinstance(binding, (bytes, bytearray, memoryview)):
        raise TypeError("binding must be the bytes made by backup_binding(host, database, name), not %s" % type(binding).__name__)
    binding = bytes(binding)
    problem = None
    if not binding.startswith(_BINDING_LABEL):
        problem = "it does not start with the binding label"
    else:
        pos = len(_BINDING_LABEL)
        for what in _BINDING_PARTS:
            if len(binding) < pos + 2:
                problem = "it ends before the length of its %s" % what
                break
            size = struct.unpack_from(">H", binding, pos)[0]
            part = binding[pos + 2:pos + 2 + size]
            if size == 0 or len(part) != size:
                problem = "its %s is empty or cut short" % what
                break
            try:
                part.decode("utf-8")
            except UnicodeDecodeError:
                problem = "its %s is not UTF-8" % what
                break
            pos += 2 + size
        else:
            if pos != len(binding):
                problem = "%d bytes follow the backup name" % (len(binding) - pos)
    if problem is not None:
        raise ValueError("binding is not made by backup_binding(host, database, name): %s" % problem)
    return binding


def _wrap_key(master_key: bytes, salt: bytes, version: int = 1) -> bytes:
    """The key-wrapping key derived from a master key and a wrap salt (format version 1 or 2)."""
    return hkdf(master_key, salt, _WRAP_INFO_V2 if version == 2 else _WRAP_INFO)


def _wrap_aad(kid: str, binding: Optional[bytes] = None) -> bytes:
    """Associated data of the key wrap: the wrapping key's id (v1), and the backup's binding (v2, when ``binding`` is given)."""
    if binding is None:
        return _WRAP_AAD_PREFIX + kid.encode("ascii")
    return _WRAP_AAD_PREFIX_V2 + kid.encode("ascii") + binding


def wrap_data_key(master_key: bytes, data_key: bytes, binding: Optional[bytes] = None,
                  _salt: Optional[bytes] = None, _nonce: Optional[bytes] = None) -> Dict[str, str]:
    """Wrap a data key with a master key; return the envelope dict stored in the backup metadata.

    With ``binding`` (from :func:`backup_binding`) the envelope is format version 2
    (``ENVELOPE_TYPE_V2``): it opens only for that backup. Without it, version 1
    (``ENVELOPE_TYPE``), kept for test vectors and compatibility; new backups use version 2.
    ``_salt`` and ``_nonce`` exist only to reproduce test vectors; never pass them otherwise.
    """
    require_cryptography()
    master_key = check_key(master_key, "master key")
    data_key = check_key(data_key, "data key")
    version = 1 if binding is None else 2
    if binding is not None:
        binding = check_binding(binding)
    salt = _random_or_given(_salt, SALT_SIZE, "wrap salt")
    nonce = _random_or_given(_nonce, NONCE_SIZE, "wrap nonce")
    kid = key_id(master_key)
    wrapped = AESGCM(_wrap_key(master_key, salt, version)).encrypt(nonce, data_key, _wrap_aad(kid, binding))
    return {
        "type": ENVELOPE_TYPE_V2 if version == 2 else ENVELOPE_TYPE,
        "key_id": kid,
        "salt": b64_text(salt),
        "nonce": b64_text(nonce),
        "wrapped_key": b64_text(wrapped),
    }


def _envelope_field(envelope: Dict[str, Any], field: str, size: int) -> bytes:
    """Decode one base64 field of an envelope, checking its decoded length."""
    value = envelope.get(field)
    if value is None:
        raise IntegrityError("encryption envelope field '%s' is missing" % field)
    if not isinstance(value, str):
        raise IntegrityError("encryption envelope field '%s' is not a string" % field)
    decoded = None
    try:
        decoded = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        pass
    if decoded is None:
        raise IntegrityError("encryption envelope field '%s' is not valid base64" % field)
    if len(decoded) != size:
        raise IntegrityError("encryption envelope field '%s' decodes to %d bytes instead of %d" % (field, len(decoded), size))
    return decoded


def _envelope_type(envelope: Any) -> Any:
    """The ``type`` of an envelope; IntegrityError if the envelope is not an object or has none."""
    if not isinstance(envelope, dict):
        raise IntegrityError("encryption envelope is not a JSON object")
    kind = envelope.get("type")
    if kind is None:
        raise IntegrityError("encryption envelope field 'type' is missing")
    return kind


def _shown_type(kind: Any) -> str:
    """An envelope type as it may appear in a message: the text if short, else the JSON type's name."""
    return kind if isinstance(kind, str) and len(kind) <= 64 else type(kind).__name__


def envelope_version(envelope: Dict[str, Any]) -> int:
    """Format version (1 or 2) of a master-key or hybrid-pq envelope, from its ``type`` alone.

    Version 1 envelopes are not bound to their backup and are re-wrapped to version 2
    by ``quankey-backup rekey``. IntegrityError for anything else: not an object, no
    ``type``, an unknown type, or the OpenSSL enc envelope (which cannot carry a binding).
    """
    kind = _envelope_type(envelope)
    if isinstance(kind, str):
        if kind in _MASTER_KEY_TYPES:
            return _MASTER_KEY_TYPES[kind]
        if kind in _HYBRID_PQ_TYPES:
            return _HYBRID_PQ_TYPES[kind]
        if kind == _OPENSSL_ENC_TYPE:
            raise IntegrityError("encryption envelope field 'type' is %r: an OpenSSL enc (aes-256-cbc) envelope has no "
                                 "format version and cannot be bound to its backup" % kind)
    raise IntegrityError("encryption envelope field 'type' is %r: expected a master-key type (%s) or a hybrid-pq type (%s)"
                         % (_shown_type(kind), ", ".join(sorted(_MASTER_KEY_TYPES)), ", ".join(sorted(_HYBRID_PQ_TYPES))))


def _parse_envelope(envelope: Dict[str, Any]) -> Tuple[str, bytes, bytes, bytes]:
    """Validate a master-key envelope (version 1 or 2); return (key id, salt, nonce, wrapped key)."""
    kind = _envelope_type(envelope)
    if isinstance(kind, str) and kind in _HYBRID_PQ_TYPES:
        raise IntegrityError("encryption envelope field 'type' is %r: this backup's data key is sealed to hybrid-pq recipients, "
                             "not wrapped with a master key: open it with an identity" % kind)
    if not isinstance(kind, str) or kind not in _MASTER_KEY_TYPES:
        raise IntegrityError("encryption envelope field 'type' is %r: this version supports only %r and %r"
                             % (_shown_type(kind), ENVELOPE_TYPE, ENVELOPE_TYPE_V2))
    kid = envelope.get("key_id")
    if kid is None:
        raise IntegrityError("encryption envelope field 'key_id' is missing")
    if not isinstance(kid, str) or not _KEY_ID_RE.match(kid):
        raise IntegrityError("encryption envelope field 'key_id' is not a key id (%s and 16 hex digits)" % KEY_ID_PREFIX)
    salt = _envelope_field(envelope, "salt", SALT_SIZE)
    nonce = _envelope_field(envelope, "nonce", NONCE_SIZE)
    wrapped = _envelope_field(envelope, "wrapped_key", _WRAPPED_KEY_SIZE)
    return kid, salt, nonce, wrapped


def _as_keyring(master_keys: MasterKeys) -> List[bytes]:
    """Normalise one key or a sequence of keys to a non-empty list of 32-byte keys."""
    if isinstance(master_keys, (bytes, bytearray, memoryview)):
        keys = [master_keys]
    else:
        keys = list(master_keys)
    if not keys:
        raise ConfigError("no master key given: set %s (%s)" % (MASTER_KEY_NAME, _MASTER_KEY_HINT))
    return [check_key(key, "master key") for key in keys]


def unwrap_data_key(master_keys: MasterKeys, envelope: Dict[str, Any], name: str = MASTER_KEY_NAME,
                    binding: Optional[bytes] = None) -> bytes:
    """Recover a backup's data key from its envelope with one master key or a keyring (list of keys).

    ``binding`` (from :func:`backup_binding`) is the identity of the backup being read; a
    version 2 envelope needs it (TypeError without: a caller bug), a version 1 envelope
    ignores it. The key whose id matches the envelope is tried first, then the others.
    Raises IntegrityError for a malformed envelope, WrongKeyError if no key opens it, and
    TamperedError if the key with the matching id fails (for version 2: the metadata
    belongs to another backup, or was modified).
    """
    require_cryptography()
    wanted, salt, nonce, wrapped = _parse_envelope(envelope)
    version = envelope_version(envelope)
    if binding is not None:
        binding = check_binding(binding)
    if version == 1:
        binding = None
    elif binding is None:
        raise TypeError("a format version 2 envelope (%s) opens only with its backup's binding: "
                        "pass binding=backup_binding(host, database, name)" % ENVELOPE_TYPE_V2)
    keyring = [(key_id(key), key) for key in _as_keyring(master_keys)]
    keyring.sort(key=lambda item: item[0] != wanted)  # stable: the matching key first
    for kid, key in keyring:
        try:
            data_key = AESGCM(_wrap_key(key, salt, version)).decrypt(nonce, wrapped, _wrap_aad(kid, binding))
        except InvalidTag:
            continue
        return data_key
    tried = list(dict.fromkeys(kid for kid, _key in keyring))
    if wanted in tried and version == 2:
        raise TamperedError("this backup's data key is wrapped with key %s, but with the key given with that id it does not open "
                            "for this backup: the metadata was copied from another backup (another host, database or name) "
                            "or modified" % wanted)
    if wanted in tried:
        raise TamperedError("this backup's data key is wrapped with key %s and the key given with that id does not open it: "
                            "the encryption envelope in the metadata was modified or corrupted" % wanted)
    if len(tried) == 1:
        given = "the key given is %s" % tried[0]
    else:
        given = "the keys given are %s" % ", ".join(tried)
    raise WrongKeyError("this backup's data key is wrapped with key %s; %s: set %s to the key that made this backup"
                        % (wanted, given, name))


# --------------------------------------------------------------------------- data object

def read_header(data: BytesLike) -> Dict[str, Any]:
    """Describe the header at the start of ``data`` (at least the first 56 bytes of an object).

    Returns version, suite, segment_size and salt (hex). Needs no key; raises
    IntegrityError (TruncatedError if shorter than a header) for anything else.
    """
    data = bytes(data[:HEADER_SIZE])
    if len(data) < HEADER_SIZE:
        raise _truncated_header(data)
    fields = _parse_header(data)
    return {
        "version": fields["version"],
        "suite": fields["suite"],
        "segment_size": fields["segment_size"],
        "salt": binascii.hexlify(fields["salt"]).decode("ascii"),
    }


def _byte_view(data: BytesLike) -> memoryview:
    """A flat unsigned-byte memoryview of any bytes-like object, without copying."""
    view = memoryview(data)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


class StreamEncryptor:
    """Encrypt a stream into a format-v1 data object, holding at most one segment in memory.

    ``update`` returns the encrypted bytes ready so far (the first output starts
    with the header); ``finalize`` seals the final segment and returns the rest.
    """

    def __init__(self, data_key: BytesLike, segment_size: int = DEFAULT_SEGMENT_SIZE, _salt: Optional[bytes] = None) -> None:
        require_cryptography()
        data_key = check_key(data_key, "data key")
        log2 = _segment_size_log2(segment_size)
        salt = _random_or_given(_salt, SALT_SIZE, "stream salt")
        payload_key, commitment = _derive_stream_keys(data_key, salt)
        self.header: bytes = _HEADER_PREFIX.pack(MAGIC, FORMAT_VERSION, SUITE_AES_256_GCM_STREAM, log2, 0) + salt + commitment
        self.segment_size: int = segment_size
        self.segments: int = 0
        self.plaintext_bytes: int = 0
        self._aead = AESGCM(payload_key)
        self._pending = bytearray()
        self._header_sent = False
        self._finished = False

    def __repr__(self) -> str:
        return "<StreamEncryptor segment_size=%d segments=%d finished=%s>" % (self.segment_size, self.segments, self._finished)

    def _seal(self, chunk: BytesLike, final: bool) -> bytes:
        """Encrypt one segment and advance the counter."""
        sealed = self._aead.encrypt(_segment_nonce(self.segments, final), _aead_data(chunk), self.header)
        self.segments += 1
        self.plaintext_bytes += len(chunk)
        return sealed

    def _start(self, out: List[bytes]) -> None:
        """Put the header in front of the first output."""
        if not self._header_sent:
            out.append(self.header)
            self._header_sent = True

    def update(self, data: BytesLike) -> bytes:
        """Add plaintext; return the header and whole non-final segments that are now known not to be last."""
        if self._finished:
            raise ValueError("update() called after finalize()")
        out: List[bytes] = []
        self._start(out)
        view = _byte_view(data)
        size, total, pos = self.segment_size, len(view), 0
        pending = self._pending
        if pending:
            take = min(size - len(pending), total)
            pending += view[:take]
            pos = take
            if len(pending) == size and pos < total:
                out.append(self._seal(pending, False))
                pending.clear()
        while total - pos > size:
            out.append(self._seal(view[pos:pos + size], False))
            pos += size
        if pos < total:
            pending += view[pos:]
        return b"".join(out)

    def finalize(self) -> bytes:
        """Seal the buffered plaintext (possibly empty) as the final segment and return it."""
        if self._finished:
            raise ValueError("finalize() called twice")
        out: List[bytes] = []
        self._start(out)
        out.append(self._seal(bytes(self._pending), True))
        self._pending = bytearray()
        self._finished = True
        return b"".join(out)


class FailClosedDecryptor:
    """What the streaming decryptors share: ``update``/``finalize`` around a subclass's ``_update``/``_finalize``.

    After the first IntegrityError every later call raises it again, and nothing
    is accepted after ``finalize``. Subclasses set ``_error = None`` and
    ``_finished = False`` in ``__init__``.
    """

    _error: Optional[IntegrityError] = None
    _finished: bool = False

    def _update(self, data: BytesLike) -> bytes:
        raise NotImplementedError

    def _finalize(self) -> bytes:
        raise NotImplementedError

    def _check_usable(self, what: str) -> None:
        """Refuse further use after finalize, and repeat the first failure after one."""
        if self._error is not None:
            raise self._error
        if self._finished:
            raise ValueError("%s called after finalize()" % what)

    def update(self, data: BytesLike) -> bytes:
        """Add object bytes; return the plaintext now known to be good (see the subclass).

        Once it has raised an IntegrityError, every later call raises it again.
        """
        self._check_usable("update()")
        try:
            return self._update(data)
        except IntegrityError as error:
            self._error = error
            raise

    def finalize(self) -> bytes:
        """Check the end of the object and return the last plaintext (see the subclass's ``_finalize``)."""
        self._check_usable("finalize()")
        self._finished = True
        try:
            return self._finalize()
        except IntegrityError as error:
            self._error = error
            raise


class StreamDecryptor(FailClosedDecryptor):
    """Decrypt and authenticate a format-v1 data object, holding at most one segment in memory.

    A segment is decrypted as non-final only once more bytes follow it; the
    held-back last segment is checked as final by ``finalize``, which is what
    proves the object is complete. Treat output as provisional until then.
    """

    def __init__(self, data_key: BytesLike) -> None:
        require_cryptography()
        self._data_key = check_key(data_key, "data key")
        self.header: Optional[bytes] = None
        self.segment_size: Optional[int] = None
        self.segments: int = 0
        self.plaintext_bytes: int = 0
        self._aead: Any = None
        self._sealed_size = 0
        self._pending = bytearray()
        self._finished = False
        self._error: Optional[IntegrityError] = None

    def __repr__(self) -> str:
        return "<StreamDecryptor segment_size=%s segments=%d finished=%s>" % (self.segment_size, self.segments, self._finished)

    def _offset(self, index: int) -> int:
        """Byte offset of segment ``index`` in the object."""
        return HEADER_SIZE + index * self._sealed_size

    def _start(self, header: bytes) -> None:
        """Parse the header and check the key commitment."""
        fields = _parse_header(header)
        payload_key, commitment = _derive_stream_keys(self._data_key, fields["salt"])
        if not hmac.compare_digest(commitment, fields["commitment"]):
            raise WrongKeyError("the data key does not open this object (key commitment mismatch): "
                                "the object belongs to another backup or its header was modified")
        self.header = header
        self.segment_size = fields["segment_size"]
        self._sealed_size = fields["segment_size"] + TAG_SIZE
        self._aead = AESGCM(payload_key)

    def _try_open(self, chunk: BytesLike, final: bool) -> Optional[bytes]:
        """Decrypt the next segment as final or not; None if authentication fails."""
        try:
            return self._aead.decrypt(_segment_nonce(self.segments, final), _aead_data(chunk), self.header)
        except InvalidTag:
            return None

    def _accept(self, plain: bytes) -> bytes:
        """Count a decrypted segment."""
        self.segments += 1
        self.plaintext_bytes += len(plain)
        return plain

    def _tampered(self, detail: str) -> TamperedError:
        """Error for the current segment failing authentication."""
        return TamperedError("authentication failed at segment %d (object offset %d): %s" % (self.segments, self._offset(self.segments), detail))

    def _open_middle(self, chunk: BytesLike) -> bytes:
        """Decrypt a segment that more bytes follow, so it must be non-final."""
        plain = self._try_open(chunk, False)
        if plain is None:
            if self._try_open(chunk, True) is not None:
                raise self._tampered("it is the final segment but more bytes follow it: data was appended to the object")
            raise self._tampered("the object was modified or corrupted")
        return self._accept(plain)

    def _update(self, data: BytesLike) -> bytes:
        """The body of update(): header first, then whole segments that more bytes follow."""
        view = _byte_view(data)
        total, pos = len(view), 0
        pending = self._pending
        if self.header is None:
            pos = min(HEADER_SIZE - len(pending), total)
            pending += view[:pos]
            if len(pending) < HEADER_SIZE:
                if len(pending) >= 8 and not pending.startswith(MAGIC):
                    raise _not_our_format(bytes(pending))
                return b""
            self._start(bytes(pending))
            pending.clear()
        size = self._sealed_size
        out: List[bytes] = []
        if pending:
            take = min(size - len(pending), total - pos)
            pending += view[pos:pos + take]
            pos += take
            if len(pending) == size and pos < total:
                out.append(self._open_middle(pending))
                pending.clear()
        while total - pos > size:
            out.append(self._open_middle(view[pos:pos + size]))
            pos += size
        if pos < total:
            pending += view[pos:]
        return b"".join(out)

    def _finalize(self) -> bytes:
        """Authenticate the held-back bytes as the final segment and return its plaintext.

        Raises TruncatedError if the object ends before its final segment,
        TamperedError if the last bytes fail authentication.
        """
        pending, self._pending = self._pending, bytearray()  # all that remains of the object
        if self.header is None:
            raise _truncated_header(bytes(pending))
        if not pending:  # update() always holds back at least one byte of the last segment
            raise TruncatedError("encrypted stream is truncated after its header: the object is incomplete")
        if len(pending) < TAG_SIZE:
            raise TruncatedError("encrypted stream is truncated inside segment %d (object offset %d): the object is incomplete"
                                 % (self.segments, self._offset(self.segments)))
        plain = self._try_open(pending, True)
        if plain is not None:
            return self._accept(plain)
        if len(pending) == self._sealed_size and self._try_open(pending, False) is not None:
            raise TruncatedError("encrypted stream is truncated after segment %d: the object is incomplete" % self.segments)
        raise self._tampered("the object was modified, corrupted or truncated")


class RangeDecryptor(StreamDecryptor):
    """Decrypt and authenticate segments ``first`` to ``last`` of an object, read from where segment ``first`` starts.

    ``header`` is the object's 56-byte header (read separately; the key commitment is checked against it) and
    ``final`` the index of the object's last segment (from its size): each segment is opened at its own index, as
    final only if it is that one, so a range read from its place proves its bytes exactly as a whole read would.
    :meth:`finalize` checks that segment ``last`` was the last one read.
    """

    def __init__(self, data_key: BytesLike, header: BytesLike, first: int, last: int, final: int) -> None:
        StreamDecryptor.__init__(self, data_key)
        if not 0 <= first <= last <= final:
            raise ValueError("segments %d to %d of an object whose last is %d" % (first, last, final))
        self._start(bytes(header[:HEADER_SIZE]))
        self.segments = first
        self._last = last
        self._final = final

    def _open_middle(self, chunk: BytesLike) -> bytes:
        if self.segments >= self._last:
            raise self._tampered("more bytes follow segment %d, the last of this range" % self._last)
        return StreamDecryptor._open_middle(self, chunk)

    def _finalize(self) -> bytes:
        pending, self._pending = self._pending, bytearray()
        if self.segments != self._last or not pending:
            raise TruncatedError("the read of segments up to %d ended at segment %d (object offset %d): the object is "
                                 "shorter than its metadata says" % (self._last, self.segments, self._offset(self.segments)))
        final = self.segments == self._final
        if not final and len(pending) != self._sealed_size:
            raise TruncatedError("segment %d (object offset %d) is cut short: the object is incomplete"
                                 % (self.segments, self._offset(self.segments)))
        plain = self._try_open(pending, final)
        if plain is None:
            if final and len(pending) == self._sealed_size and self._try_open(pending, False) is not None:
                raise TruncatedError("encrypted stream is truncated after segment %d: the object is incomplete" % self.segments)
            raise self._tampered("the object was modified or corrupted")
        return self._accept(plain)


def stream_capacity(segment_size: int, object_size: int) -> int:
    """How many stream (plaintext) bytes an object of ``object_size`` bytes holds; ValueError if it holds no segment."""
    sealed = segment_size + TAG_SIZE
    body = object_size - HEADER_SIZE
    if body < TAG_SIZE:
        raise ValueError("an object of %d bytes holds no segment" % object_size)
    return body - ((body - 1) // sealed + 1) * TAG_SIZE


def segment_span(start: int, end: int, segment_size: int, object_size: int) -> Tuple[int, int, int, int, int]:
    """Where the stream bytes ``start`` to ``end`` (exclusive) of an object lie: ``(first segment, last segment, the
    object's last segment, first object byte, end object byte)``; ValueError when the object cannot hold them."""
    sealed = segment_size + TAG_SIZE
    capacity = stream_capacity(segment_size, object_size)
    final = (object_size - HEADER_SIZE - 1) // sealed
    if not 0 <= start < end <= capacity:
        raise ValueError("stream bytes %d to %d are outside the object's %d" % (start, end, capacity))
    first, last = start // segment_size, (end - 1) // segment_size
    return first, last, final, HEADER_SIZE + first * sealed, min(HEADER_SIZE + (last + 1) * sealed, object_size)


def check_key_commitment(header: BytesLike, data_key: BytesLike, basename: str = "backup") -> None:
    """Raise WrongKeyError unless ``data_key`` belongs to the object whose first bytes are ``header`` (its key commitment).

    A check of the data key against the object without downloading it (a ranged read of 56 bytes).
    """
    opener = StreamDecryptor(data_key)
    opener.update(bytes(header[:HEADER_SIZE]))
    if opener.header is None:
        raise IntegrityError("backup %s: the object is shorter than its %d-byte header" % (basename, HEADER_SIZE))
