# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The seed's backup encryption: OpenSSL ``enc -aes-256-cbc -salt -pbkdf2`` (specified in docs/FORMAT.md).

The legacy system made backups with::

    pg_dump -Fc | gzip | openssl enc -aes-256-cbc -salt -pbkdf2 -pass env:BACKUP_ENCRYPTION_KEY

An object in that format is ``Salted__`` (magic.py) || 8-byte salt || AES-256-CBC
ciphertext with PKCS#7 padding, where key || IV = PBKDF2-HMAC-SHA256(passphrase,
salt, iterations, 48 bytes). The passphrase is the *text* of the variable, as
bytes, never base64-decoded. OpenSSL's defaults (1.1.1 and later) are 10000
iterations and SHA-256.

CBC is not authenticated: a wrong passphrase is caught by checking that the
first decrypted block looks like the start of a dump, a bad last block by its
padding, but a modified middle block decrypts to garbage silently. Whole-object
integrity comes from the SHA-256 in the backup's metadata, checked separately.

Both streaming classes hold at most a few 16-byte blocks besides the chunk
being processed. Messages never contain passphrases: only labels (variable
names), sizes and counts.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import os
import re
import traceback
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from . import compression, crypto, magic
from ..errors import ConfigError, IntegrityError, TamperedError, TruncatedError, WrongKeyError

try:
    from cryptography.hazmat.primitives import hashes, padding
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
    HAS_CRYPTOGRAPHY = True
    CRYPTOGRAPHY_IMPORT_ERROR = None
except ImportError:
    HAS_CRYPTOGRAPHY = False
    CRYPTOGRAPHY_IMPORT_ERROR = traceback.format_exc()

ENCRYPTION_NAME = "aes-256-cbc"
MAGIC = magic.OPENSSL_SALTED
SALT_SIZE = 8
HEADER_SIZE = 16
BLOCK_SIZE = 16
# Bytes a reader needs to choose the passphrase (header and first block): what a ranged probe reads.
PROBE_SIZE = 32
KEY_SIZE = 32
IV_SIZE = 16
DEFAULT_ITERATIONS = 10000
MIN_ITERATIONS = 1
MAX_ITERATIONS = 10000000
DIGEST = "sha256"
ENVELOPE_TYPE = "openssl-enc-pbkdf2-sha256"
KEY_NAME = "BACKUP_ENCRYPTION_KEY"
SEED_KDF_NAME = "BACKUP_SEED_KDF"

_CRYPTOGRAPHY_MISSING = "the Python package 'cryptography' is required: pip install cryptography"

BytesLike = Union[bytes, bytearray, memoryview]
PlaintextCheck = Callable[[bytes], bool]


# --------------------------------------------------------------------------- helpers

def _require_cryptography() -> None:
    """Raise ConfigError when the optional ``cryptography`` package is missing."""
    if not HAS_CRYPTOGRAPHY:
        raise ConfigError(_CRYPTOGRAPHY_MISSING)


def _check_iterations(iterations: Any) -> int:
    """Return ``iterations`` if it is an int within the allowed range, else raise IntegrityError."""
    if isinstance(iterations, bool) or not isinstance(iterations, int):
        raise IntegrityError("PBKDF2 iteration count is a %s, not an integer: expected %d to %d (OpenSSL's default is %d)"
                             % (type(iterations).__name__, MIN_ITERATIONS, MAX_ITERATIONS, DEFAULT_ITERATIONS))
    if not MIN_ITERATIONS <= iterations <= MAX_ITERATIONS:
        raise IntegrityError("PBKDF2 iteration count %d is out of range: expected %d to %d (OpenSSL's default is %d)"
                             % (iterations, MIN_ITERATIONS, MAX_ITERATIONS, DEFAULT_ITERATIONS))
    return iterations


def _check_passphrase(value: Any) -> bytes:
    """Return a passphrase as bytes, else raise TypeError or ValueError (a caller bug)."""
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError("passphrase must be bytes, not %s" % type(value).__name__)
    value = bytes(value)
    if not value:
        raise ValueError("passphrase is empty")
    if b"\x00" in value:
        raise ValueError("passphrase contains a NUL byte: openssl enc would use only the part before it")
    return value


def _derive(passphrase: bytes, salt: bytes, iterations: int) -> Tuple[bytes, bytes]:
    """OpenSSL enc -pbkdf2 key derivation: (key, iv) from PBKDF2-HMAC-SHA256 with a 48-byte output."""
    derived = PBKDF2HMAC(algorithm=hashes.SHA256(), length=KEY_SIZE + IV_SIZE, salt=salt, iterations=iterations).derive(passphrase)
    return derived[:KEY_SIZE], derived[KEY_SIZE:]


_DIGESTS = ("sha256", "sha1", "sha512", "md5")


class Kdf:
    """How ``openssl enc`` turned a passphrase and salt into the key and IV (48 bytes).

    ``pbkdf2``: PBKDF2-HMAC-<digest> with ``iterations`` (``-pbkdf2 [-iter N] [-md D]``, OpenSSL 1.1.1+).
    ``evp``: EVP_BytesToKey with <digest> and one round (no ``-pbkdf2``: OpenSSL's legacy derivation;
    its default digest is md5 before OpenSSL 1.1.0 and sha256 from 1.1.0 on).
    """

    __slots__ = ("kind", "digest", "iterations")

    def __init__(self, kind: str, digest: str = DIGEST, iterations: int = DEFAULT_ITERATIONS) -> None:
        if kind not in ("pbkdf2", "evp") or digest not in _DIGESTS:
            raise ValueError("unknown key derivation %s-%s" % (kind, digest))
        self.kind = kind
        self.digest = digest
        self.iterations = _check_iterations(iterations) if kind == "pbkdf2" else 1

    def __repr__(self) -> str:
        return "Kdf(%s)" % self.spec()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Kdf) and other.spec() == self.spec()

    def __hash__(self) -> int:
        return hash(self.spec())

    def spec(self) -> str:
        """The setting's spelling: ``pbkdf2-sha256:10000``, ``evp-md5``."""
        if self.kind == "pbkdf2":
            return "pbkdf2-%s:%d" % (self.digest, self.iterations)
        return "evp-%s" % self.digest

    def describe(self) -> str:
        """For output: 'PBKDF2-HMAC-SHA256, 10000 iterations (openssl enc -pbkdf2)'."""
        if self.kind == "pbkdf2":
            return "PBKDF2-HMAC-%s, %d iterations (openssl enc -pbkdf2)" % (self.digest.upper(), self.iterations)
        return "EVP_BytesToKey %s (openssl enc without -pbkdf2)" % self.digest.upper()

    def cost(self) -> int:
        """A rough relative cost (hash blocks), to try cheap derivations first."""
        return self.iterations * 2 if self.kind == "pbkdf2" else 3

    def derive(self, passphrase: bytes, salt: bytes) -> Tuple[bytes, bytes]:
        """(key, iv) for a passphrase and the object's salt."""
        if self.kind == "pbkdf2":
            derived = PBKDF2HMAC(algorithm=getattr(hashes, self.digest.upper())(), length=KEY_SIZE + IV_SIZE, salt=salt,
                                 iterations=self.iterations).derive(passphrase)
        else:
            derived, block = b"", b""
            while len(derived) < KEY_SIZE + IV_SIZE:
                block = hashlib.new(self.digest, block + passphrase + salt).digest()
                derived += block
        return derived[:KEY_SIZE], derived[KEY_SIZE:KEY_SIZE + IV_SIZE]


# What a seed object is tried with when its derivation is not known: OpenSSL's -pbkdf2 default first, then the
# legacy derivation (sha256 since OpenSSL 1.1.0, md5 before), then the -iter counts scripts commonly set.
PROBE_KDFS = (Kdf("pbkdf2", "sha256", 10000), Kdf("evp", "sha256"), Kdf("evp", "md5"), Kdf("pbkdf2", "sha256", 100000),
              Kdf("pbkdf2", "sha256", 200000), Kdf("pbkdf2", "sha256", 600000), Kdf("pbkdf2", "sha256", 1000000))


def parse_kdf(text: str, label: str = SEED_KDF_NAME) -> Kdf:
    """A key derivation from its spelling: ``pbkdf2[-<digest>][:<iterations>]`` or ``evp[-<digest>]`` (default digest sha256).

    Digests: sha256, sha1, sha512, md5. ConfigError naming ``label`` otherwise.
    """
    match = re.match(r"\A\s*(pbkdf2|evp)(?:-(sha256|sha1|sha512|md5))?(?::(\d+))?\s*\Z", str(text or "").lower())
    if not match or (match.group(1) == "evp" and match.group(3)):
        raise ConfigError("%s %r is not a key derivation: use pbkdf2-sha256:<iterations> (openssl enc -pbkdf2 -iter N), "
                          "or evp-md5 / evp-sha256 (openssl enc without -pbkdf2)" % (label, text))
    iterations = int(match.group(3)) if match.group(3) else DEFAULT_ITERATIONS
    try:
        return Kdf(match.group(1), match.group(2) or DIGEST, iterations)
    except IntegrityError as exc:
        raise ConfigError("%s: %s" % (label, exc.message))


def probe_kdfs(first: Optional[Kdf] = None) -> List[Kdf]:
    """The derivations tried on a seed object, cheapest and likeliest first; ``first`` (the setting) before them."""
    found = [first] if first is not None else []
    found += [kdf for kdf in PROBE_KDFS if kdf != first]
    return found


def _byte_view(data: BytesLike) -> memoryview:
    """A flat unsigned-byte memoryview of any bytes-like object, without copying."""
    view = memoryview(data)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


def looks_like(prefix: BytesLike) -> bool:
    """True if ``prefix`` (the first bytes of an object, at least 8) starts with ``Salted__``."""
    return bytes(prefix[:len(MAGIC)]) == MAGIC


def plausible_dump_start(data: BytesLike) -> bool:
    """True if ``data`` (a first 16-byte block) plausibly starts a backup's plaintext in one of the registered
    compressions (compression.CODECS: a zstd frame, a gzip stream with its reserved flag bits clear, a pg_dump
    archive or a plain-SQL dump, ...): how a wrong passphrase is told apart."""
    return compression.plausible_start(bytes(data[:BLOCK_SIZE]))


def _not_openssl(prefix: bytes) -> IntegrityError:
    """Build the error for bytes that do not start with ``Salted__``, naming known formats (magic.py)."""
    start = "not an aes-256-cbc (OpenSSL enc) object"
    known = magic.identify(prefix)
    if known is not None:
        return IntegrityError("%s: it is %s; %s" % (start, known.describe(), known.hint))
    return IntegrityError("%s: it does not start with %r (was it written with -nosalt, or not by openssl enc?)" % (start, MAGIC))


def _short_object(received: bytes) -> IntegrityError:
    """Error for an object that ends before its header and first block are complete."""
    if not received:
        return TruncatedError("aes-256-cbc (OpenSSL enc) object is empty: expected at least %d bytes; the object is incomplete"
                              % (HEADER_SIZE + BLOCK_SIZE))
    if not MAGIC.startswith(received[:len(MAGIC)]):
        return _not_openssl(received)
    if len(received) < HEADER_SIZE:
        return TruncatedError("aes-256-cbc (OpenSSL enc) object is truncated inside its %d-byte header (%d bytes): the object is incomplete"
                              % (HEADER_SIZE, len(received)))
    return TruncatedError("aes-256-cbc (OpenSSL enc) object has %d bytes of ciphertext after its header, less than one %d-byte block: "
                          "the object is incomplete" % (len(received) - HEADER_SIZE, BLOCK_SIZE))


def check_header(prefix: BytesLike) -> None:
    """Raise IntegrityError (TruncatedError when too short) unless an object's first bytes start an OpenSSL enc object.

    A check without a key, on a ranged read of the first 16 bytes (health's encryption rule).
    """
    prefix = bytes(prefix[:HEADER_SIZE])
    if len(prefix) < HEADER_SIZE or not looks_like(prefix):
        raise _short_object(prefix)


def _or_list(labels: Sequence[str]) -> str:
    """``A``, ``A or B``, ``A, B or C``."""
    if len(labels) == 1:
        return labels[0]
    return "%s or %s" % (", ".join(labels[:-1]), labels[-1])


# --------------------------------------------------------------------------- envelope

def passphrase_envelope(key_id: Optional[str], iterations: int = DEFAULT_ITERATIONS) -> Dict[str, Any]:
    """The JSON object stored in a backup's metadata for this format. It holds no secret.

    ``key_id`` is a non-secret name of the passphrase, chosen by the caller; None when it is not known
    (the seed's own backups, whose metadata names no key).
    """
    if key_id is not None and not isinstance(key_id, str):
        raise TypeError("key_id must be a str, not %s" % type(key_id).__name__)
    if key_id == "":
        raise ValueError("key_id is empty")
    return {
        "type": ENVELOPE_TYPE,
        "key_id": key_id,
        "iterations": _check_iterations(iterations),
        "digest": DIGEST,
        "cipher": ENCRYPTION_NAME,
    }


def _envelope_text(envelope: Dict[str, Any], field: str, expected: str) -> None:
    """Check a required text field that must have one value."""
    value = envelope.get(field)
    if value is None:
        raise IntegrityError("encryption envelope field '%s' is missing" % field)
    if value != expected:
        shown = value if isinstance(value, str) and len(value) <= 64 else type(value).__name__
        raise IntegrityError("encryption envelope field '%s' is %r: this version supports only %r" % (field, shown, expected))


def parse_envelope(envelope: Any) -> int:
    """Validate an envelope made by :func:`passphrase_envelope`; return its iteration count.

    Unknown fields are ignored; a missing, malformed or unsupported field is an IntegrityError naming it.
    """
    if not isinstance(envelope, dict):
        raise IntegrityError("encryption envelope is not a JSON object")
    _envelope_text(envelope, "type", ENVELOPE_TYPE)
    _envelope_text(envelope, "cipher", ENCRYPTION_NAME)
    _envelope_text(envelope, "digest", DIGEST)
    kid = envelope.get("key_id")
    if kid is not None and not isinstance(kid, str):
        raise IntegrityError("encryption envelope field 'key_id' is not a string")
    if "iterations" not in envelope:
        raise IntegrityError("encryption envelope field 'iterations' is missing")
    try:
        return _check_iterations(envelope["iterations"])
    except IntegrityError as error:
        failure = error.message
    raise IntegrityError("encryption envelope field 'iterations': %s" % failure)


# --------------------------------------------------------------------------- streams

class CbcEncryptor:
    """Encrypt a stream into an OpenSSL ``enc -aes-256-cbc -salt -pbkdf2`` object in constant memory.

    ``update`` returns the ciphertext ready so far (the first output starts with
    the 16-byte header); ``finalize`` pads the last block and returns the rest.
    ``_salt`` exists only to reproduce test vectors; never pass it otherwise.
    """

    def __init__(self, passphrase: BytesLike, iterations: int = DEFAULT_ITERATIONS, _salt: Optional[BytesLike] = None) -> None:
        _require_cryptography()
        passphrase = _check_passphrase(passphrase)
        self.iterations: int = _check_iterations(iterations)
        if _salt is None:
            salt = os.urandom(SALT_SIZE)
        else:
            salt = bytes(_salt)
            if len(salt) != SALT_SIZE:
                raise ValueError("salt must be %d bytes, got %d" % (SALT_SIZE, len(salt)))
        self.header: bytes = MAGIC + salt
        self.plaintext_bytes: int = 0
        self.ciphertext_bytes: int = 0
        key, iv = _derive(passphrase, salt, self.iterations)
        self._cipher = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
        self._padder = padding.PKCS7(BLOCK_SIZE * 8).padder()
        self._header_sent = False
        self._finished = False

    def __repr__(self) -> str:
        return "<CbcEncryptor iterations=%d plaintext_bytes=%d finished=%s>" % (self.iterations, self.plaintext_bytes, self._finished)

    def _emit(self, ciphertext: bytes) -> bytes:
        """Count ciphertext and put the header in front of the first output."""
        self.ciphertext_bytes += len(ciphertext)
        if self._header_sent:
            return ciphertext
        self._header_sent = True
        return self.header + ciphertext

    def update(self, data: BytesLike) -> bytes:
        """Add plaintext; return the header (first call) and every whole block encrypted so far."""
        if self._finished:
            raise ValueError("update() called after finalize()")
        view = _byte_view(data)
        self.plaintext_bytes += len(view)
        return self._emit(self._cipher.update(self._padder.update(view)))

    def finalize(self) -> bytes:
        """Pad (PKCS#7, 1 to 16 bytes) and return the last block(s)."""
        if self._finished:
            raise ValueError("finalize() called twice")
        self._finished = True
        tail = self._cipher.update(self._padder.finalize()) + self._cipher.finalize()
        return self._emit(tail)


class CbcDecryptor(crypto.FailClosedDecryptor):
    """Decrypt an OpenSSL ``enc -aes-256-cbc -salt -pbkdf2`` object in constant memory.

    ``passphrases`` is a list of (label, passphrase bytes); labels (e.g. variable
    names) appear in messages, passphrases never do. Once the header and the
    first block have arrived, the first block is decrypted with each passphrase
    in turn and the first whose plaintext passes ``check_plaintext`` is used
    (its label is then in :attr:`passphrase_label`). ``check_plaintext=None``
    skips that check and needs exactly one passphrase: a wrong one is then only
    (unreliably) noticed by the padding at :meth:`finalize`.

    Output is not authenticated (CBC): check the object's SHA-256 against the
    metadata to know it is intact. Bad padding at the end raises TamperedError.
    """

    def __init__(self, passphrases: Sequence[Tuple[str, BytesLike]], iterations: int = DEFAULT_ITERATIONS,
                 check_plaintext: Optional[PlaintextCheck] = plausible_dump_start,
                 kdfs: Optional[Sequence[Kdf]] = None) -> None:
        _require_cryptography()
        self.iterations: int = _check_iterations(iterations)
        self._kdfs: List[Kdf] = list(kdfs) if kdfs else [Kdf("pbkdf2", DIGEST, self.iterations)]
        if isinstance(passphrases, (bytes, bytearray, memoryview, str)):
            raise TypeError("passphrases must be a list of (label, passphrase) pairs")
        candidates: List[Tuple[str, bytes]] = []
        for item in passphrases:
            if not isinstance(item, (tuple, list)) or len(item) != 2 or not isinstance(item[0], str) or not item[0]:
                raise TypeError("passphrases must be a list of (label, passphrase) pairs with non-empty str labels")
            label, value = item
            if isinstance(value, (bytes, bytearray, memoryview)) and not bytes(value):
                raise ConfigError("%s is empty: set it to the seed's %s (the passphrase text given to openssl enc)" % (label, KEY_NAME))
            candidates.append((label, _check_passphrase(value)))
        if not candidates:
            raise ConfigError("no passphrase given for this aes-256-cbc (OpenSSL enc) backup: set %s to the seed's %s" % (KEY_NAME, KEY_NAME))
        if check_plaintext is None and (len(candidates) != 1 or len(self._kdfs) != 1):
            raise ValueError("check_plaintext=None needs exactly one passphrase and key derivation: without a check the "
                             "right one cannot be told apart")
        if check_plaintext is not None and not callable(check_plaintext):
            raise TypeError("check_plaintext must be callable or None")
        self._candidates = candidates
        self._check = check_plaintext
        self.passphrase_label: Optional[str] = None
        self.candidate: Optional[int] = None  # index in ``passphrases`` of the one chosen
        self.kdf: Optional[Kdf] = None
        self.salt: Optional[bytes] = None
        self.object_bytes: int = 0
        self.plaintext_bytes: int = 0
        self._pending = bytearray()
        self._cipher: Any = None
        self._unpadder: Any = None
        self._finished = False
        self._error: Optional[IntegrityError] = None

    def __repr__(self) -> str:
        return "<CbcDecryptor iterations=%d passphrase_label=%s object_bytes=%d finished=%s>" % (
            self.iterations, self.passphrase_label, self.object_bytes, self._finished)

    def _start(self, salt: bytes, first_block: bytes) -> bytes:
        """Pick the passphrase and key derivation whose first plaintext block passes the check; return that block's output.

        Derivations are tried in the order given (cheapest first), each with every passphrase.
        """
        self.salt = salt
        derived: Dict[Tuple[Kdf, bytes], Tuple[bytes, bytes]] = {}  # one derivation per distinct passphrase, this call only
        for kdf in self._kdfs:
            for label, passphrase in self._candidates:
                if (kdf, passphrase) not in derived:
                    derived[(kdf, passphrase)] = kdf.derive(passphrase, salt)
                key, iv = derived[(kdf, passphrase)]
                cipher = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
                first_plain = cipher.update(first_block)
                if self._check is None or self._check(first_plain):
                    self.passphrase_label = label
                    self.candidate = self._candidates.index((label, passphrase))
                    self.kdf = kdf
                    self._cipher = cipher
                    self._unpadder = padding.PKCS7(BLOCK_SIZE * 8).unpadder()
                    return self._plain(self._unpadder.update(first_plain))
        labels = list(dict.fromkeys(label for label, _value in self._candidates))
        if self._check is plausible_dump_start:
            wanted = "the start of %s" % compression.kinds()
        else:
            wanted = "accepted by the plaintext check"
        tried = self._kdfs[0].describe() if len(self._kdfs) == 1 else "%d key derivations (%s)" % (
            len(self._kdfs), ", ".join(kdf.spec() for kdf in self._kdfs))
        raise WrongKeyError("none of the passphrases given decrypts this aes-256-cbc (OpenSSL enc) object: with %s and %s its "
                            "first block is not %s (or the object's start is corrupted): set %s to the passphrase the "
                            "backup was made with%s" % (_or_list(labels), tried, wanted, _or_list(labels),
                                                        "" if len(self._kdfs) == 1 else
                                                        ", or %s to how it was derived" % SEED_KDF_NAME))

    def _plain(self, data: bytes) -> bytes:
        """Count plaintext output."""
        self.plaintext_bytes += len(data)
        return data

    def _update(self, data: BytesLike) -> bytes:
        """The body of update(): collect header and first block, then stream."""
        view = _byte_view(data)
        self.object_bytes += len(view)
        if self._cipher is not None:
            return self._plain(self._unpadder.update(self._cipher.update(view))) if len(view) else b""
        pending = self._pending
        need = HEADER_SIZE + BLOCK_SIZE - len(pending)
        pending += view[:need]
        if len(pending) >= len(MAGIC) and not pending.startswith(MAGIC):
            raise _not_openssl(bytes(pending))
        if len(pending) < HEADER_SIZE + BLOCK_SIZE:
            return b""
        start = bytes(pending)
        self._pending = bytearray()
        out = self._start(start[len(MAGIC):HEADER_SIZE], start[HEADER_SIZE:])
        rest = view[need:]
        if len(rest):
            out += self._plain(self._unpadder.update(self._cipher.update(rest)))
        return out

    def _finalize(self) -> bytes:
        """Check the object's length and the padding of its last block; return the last plaintext bytes.

        Raises TruncatedError if the object is shorter than a header and one
        block or its ciphertext is not a whole number of blocks, TamperedError
        if the padding is invalid (corrupted object or wrong passphrase).
        """
        if self._cipher is None:
            pending, self._pending = bytes(self._pending), bytearray()
            raise _short_object(pending)
        ciphertext = self.object_bytes - HEADER_SIZE
        if ciphertext % BLOCK_SIZE:
            raise TruncatedError("aes-256-cbc (OpenSSL enc) object has %d bytes of ciphertext, not a whole number of %d-byte blocks: "
                                 "the object is truncated (or has bytes appended)" % (ciphertext, BLOCK_SIZE))
        out = self._unpadder.update(self._cipher.finalize())
        tail = None
        try:
            tail = self._unpadder.finalize()
        except ValueError:
            pass  # raised below, outside the handler
        if tail is None:
            raise TamperedError("aes-256-cbc (OpenSSL enc) object has invalid padding in its last block: it is corrupted, truncated at a "
                                "block boundary, or was encrypted with another passphrase; compare its SHA-256 with the metadata")
        return self._plain(out + tail)
