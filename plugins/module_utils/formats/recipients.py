# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Recipient mode ``hybrid-pq``: a backup's data key sealed to public keys (specified in docs/FORMAT.md).

Instead of wrapping the 32-byte data key with a master key that every database
host must hold, the data key is sealed to one or more **recipients**: public keys
made of an X25519 key and an ML-KEM-768 key. A host that holds only public keys
can seal (take backups) but cannot open (restore). The restore side holds the
matching private **identity** in a file of mode 0600.

Per recipient, both key exchanges run (a fresh ephemeral X25519 key, and an
ML-KEM-768 encapsulation) and both shared secrets enter one HKDF-SHA256, whose
output (bound to the whole transcript, as in X-Wing) wraps the data key with
AES-256-GCM. The data key stays secret unless both X25519 and ML-KEM-768 are
broken.

Format version 2 (``ENVELOPE_TYPE_V2``) also binds every slot to the backup's
identity (:func:`crypto.backup_binding`: source host id, database, backup name),
so an envelope copied under another backup's name does not open. Version 1
envelopes are still read.

Pure: no S3, no settings. Messages never contain key material: only recipient
ids (``qkr-...``), lengths, line numbers, field names and setting labels.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import binascii
import datetime
import hashlib
import os
import re
import traceback
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from ..secretfiles import read_private_file
from . import crypto
from ..errors import ConfigError, IntegrityError, TamperedError, WrongKeyError

try:
    from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    HAS_CRYPTOGRAPHY = True
except ImportError:
    HAS_CRYPTOGRAPHY = False

try:
    from cryptography import __version__ as CRYPTOGRAPHY_VERSION
except ImportError:
    CRYPTOGRAPHY_VERSION = None

try:
    from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey, MLKEM768PublicKey
    MLKEM_IMPORT_ERROR = None
except ImportError:
    MLKEM768PrivateKey = MLKEM768PublicKey = None
    MLKEM_IMPORT_ERROR = traceback.format_exc()

ENVELOPE_TYPE = "hybrid-pq-x25519-mlkem768-hkdf-sha256"  # format version 1: no backup binding
ENVELOPE_TYPE_V2 = "hybrid-pq-x25519-mlkem768-hkdf-sha256-v2"  # format version 2: the backup's identity in every slot's aad
ENCRYPTION_NAME = "hybrid-pq"
PUBLIC_KEY_PREFIX = "qkpq1-pub-"
SECRET_KEY_PREFIX = "QKPQ1-SECRET-"
RECIPIENT_ID_PREFIX = "qkr-"

# Default setting labels, for messages (the caller passes its own).
RECIPIENTS_NAME = "BACKUP_RECIPIENTS"
IDENTITY_FILE_NAME = "BACKUP_IDENTITY_FILE"

# ML-KEM-768 on the OpenSSL backend, which the PyPI wheels use, arrived in cryptography 48.0.0
# (47.0.0 added the API, but only for builds against AWS-LC or BoringSSL).
MLKEM_MIN_CRYPTOGRAPHY = "48.0.0"

X25519_KEY_SIZE = 32
MLKEM768_PUBLIC_KEY_SIZE = 1184
MLKEM768_SEED_SIZE = 64
MLKEM768_CIPHERTEXT_SIZE = 1088
PUBLIC_KEY_CHECKSUM_SIZE = 8
PUBLIC_KEY_SIZE = X25519_KEY_SIZE + MLKEM768_PUBLIC_KEY_SIZE  # 1216: what the recipient id hashes
PUBLIC_KEY_TEXT_SIZE = PUBLIC_KEY_SIZE + PUBLIC_KEY_CHECKSUM_SIZE  # 1224 bytes after the prefix: 1632 base64 characters
SECRET_KEY_SIZE = X25519_KEY_SIZE + MLKEM768_SEED_SIZE  # 96 bytes: 128 base64 characters
MAX_RECIPIENTS = 16
WRAPPED_KEY_SIZE = crypto.KEY_SIZE + crypto.TAG_SIZE

_RECIPIENT_ID_LABEL = b"quankey-backup/v1 hybrid-pq recipient-id\x00"
_CHECKSUM_LABEL = b"quankey-backup/v1 hybrid-pq public-key\x00"
_KEK_LABEL = b"quankey-backup/v1 hybrid-pq kek\x00"
_KEK_LABEL_V2 = b"quankey-backup/v2 hybrid-pq kek\x00"
_RECIPIENT_ID_RE = re.compile(r"\Aqkr-[0-9a-f]{16}\Z")
_SEPARATORS = re.compile(r"[\s,]+")
_KEYGEN_HINT = "make one with `quankey-backup keygen`"

# The base64 fields of one recipient slot and their decoded sizes, in envelope order.
_SLOT_FIELDS = (
    ("ephemeral_public", X25519_KEY_SIZE),
    ("kem_ciphertext", MLKEM768_CIPHERTEXT_SIZE),
    ("salt", crypto.SALT_SIZE),
    ("nonce", crypto.NONCE_SIZE),
    ("wrapped_key", WRAPPED_KEY_SIZE),
)


def _mlkem_works() -> bool:
    """Whether ML-KEM-768 can be used: importable, and provided by the backend cryptography is built with."""
    if not HAS_CRYPTOGRAPHY or MLKEM768PrivateKey is None:
        return False
    try:
        MLKEM768PrivateKey.from_seed_bytes(bytes(MLKEM768_SEED_SIZE))
    except UnsupportedAlgorithm:
        return False
    return True


HAS_MLKEM = _mlkem_works()


# --------------------------------------------------------------------------- helpers

def _installed_cryptography() -> str:
    """'cryptography X with <backend>' for messages, as far as it can be told."""
    text = "'cryptography' %s" % CRYPTOGRAPHY_VERSION
    try:
        from cryptography.hazmat.backends.openssl.backend import backend
        text += " built with %s" % backend.openssl_version_text()
    except (ImportError, AttributeError):
        pass
    return text


def _mlkem_missing_message() -> str:
    """Why hybrid-pq cannot run here and what to install (one line)."""
    need = "encryption %s needs ML-KEM-768 from the Python package 'cryptography' %s or newer" % (ENCRYPTION_NAME, MLKEM_MIN_CRYPTOGRAPHY)
    fix = "pip install 'cryptography>=%s'" % MLKEM_MIN_CRYPTOGRAPHY
    if CRYPTOGRAPHY_VERSION is None:
        return "%s, which is not installed: %s" % (need, fix)
    if not HAS_CRYPTOGRAPHY or MLKEM768PrivateKey is None:
        return "%s; the installed version is %s: %s" % (need, CRYPTOGRAPHY_VERSION, fix)
    return ("%s; the installed %s has no ML-KEM (it needs OpenSSL 3.5 or newer, AWS-LC or BoringSSL): "
            "%s (the PyPI wheels include a suitable OpenSSL)" % (need, _installed_cryptography(), fix))


def require_mlkem() -> None:
    """Raise ConfigError, naming the version needed and the version installed, unless ML-KEM-768 is usable."""
    if not HAS_MLKEM:
        raise ConfigError(_mlkem_missing_message())


def _decode_b64(text: str) -> Optional[bytes]:
    """Strict standard base64, or None."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def _raw_public(key: Any) -> bytes:
    """Raw bytes of an X25519 or ML-KEM public key object."""
    return key.public_bytes_raw()


def recipient_id_of(public_bytes: bytes) -> str:
    """Recipient id of the 1216 public bytes (X25519 || ML-KEM-768): ``qkr-`` + 16 hex of SHA-256(label || bytes)."""
    return RECIPIENT_ID_PREFIX + hashlib.sha256(_RECIPIENT_ID_LABEL + bytes(public_bytes)).hexdigest()[:16]


def _checksum(public_bytes: bytes) -> bytes:
    """The 8-byte checksum that ends a public key text."""
    return hashlib.sha256(_CHECKSUM_LABEL + public_bytes).digest()[:PUBLIC_KEY_CHECKSUM_SIZE]


def _kek(ikm: bytes, salt: bytes, rid: str, ephemeral_public: bytes, x25519_public: bytes, kem_ciphertext: bytes, *,
         version: int = 1) -> bytes:
    """The key-encryption key of one slot: HKDF over both shared secrets, bound to the whole exchange (format version 1 or 2)."""
    label = _KEK_LABEL_V2 if version == 2 else _KEK_LABEL
    info = label + rid.encode("ascii") + ephemeral_public + x25519_public + hashlib.sha256(kem_ciphertext).digest()
    return crypto.hkdf(ikm, salt, info)


def _wrap_aad(rid: str, binding: Optional[bytes] = None) -> bytes:
    """Associated data of a slot's AES-256-GCM: label and recipient id, then (v2, when ``binding`` is given) the binding."""
    if binding is None:
        return _KEK_LABEL + rid.encode("ascii")
    return _KEK_LABEL_V2 + rid.encode("ascii") + binding


# --------------------------------------------------------------------------- keys

class Recipient:
    """A hybrid-pq public key (X25519 + ML-KEM-768), known by its recipient id. ``repr`` shows the id only."""

    __slots__ = ("recipient_id", "text", "public_bytes", "x25519_public_key", "mlkem_public_key")

    def __init__(self, x25519_public: bytes, mlkem_public: bytes) -> None:
        """Load a recipient from its raw public keys; ValueError if ML-KEM-768 rejects its key."""
        require_mlkem()
        x25519_public, mlkem_public = bytes(x25519_public), bytes(mlkem_public)
        if len(x25519_public) != X25519_KEY_SIZE or len(mlkem_public) != MLKEM768_PUBLIC_KEY_SIZE:
            raise ValueError("a recipient is a %d-byte X25519 and a %d-byte ML-KEM-768 public key" % (X25519_KEY_SIZE, MLKEM768_PUBLIC_KEY_SIZE))
        self.x25519_public_key = X25519PublicKey.from_public_bytes(x25519_public)
        self.mlkem_public_key = MLKEM768PublicKey.from_public_bytes(mlkem_public)
        self.public_bytes = x25519_public + mlkem_public
        self.recipient_id = recipient_id_of(self.public_bytes)
        self.text = PUBLIC_KEY_PREFIX + crypto.b64_text(self.public_bytes + _checksum(self.public_bytes))

    def __repr__(self) -> str:
        return "Recipient(%s)" % self.recipient_id

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Recipient) and other.recipient_id == self.recipient_id

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash(self.recipient_id)

    def encapsulate(self) -> Tuple[bytes, bytes, bytes]:
        """Both key exchanges to this recipient: (ephemeral X25519 public, ML-KEM ciphertext, ML-KEM secret || X25519 secret).

        ValueError if the X25519 exchange gives the all-zero secret (a low-order public key).
        """
        ephemeral = X25519PrivateKey.generate()
        ephemeral_public = _raw_public(ephemeral.public_key())
        x_secret = ephemeral.exchange(self.x25519_public_key)
        kem_secret, kem_ciphertext = self.mlkem_public_key.encapsulate()
        return ephemeral_public, kem_ciphertext, kem_secret + x_secret


class Identity:
    """A hybrid-pq private key (X25519 private key and ML-KEM-768 seed) with its recipient.

    ``repr`` and ``str`` show the recipient id only, never secret bytes.
    """

    __slots__ = ("recipient", "_x25519", "_mlkem")

    def __init__(self, secret: bytes) -> None:
        """Load an identity from its 96 secret bytes (X25519 private key || ML-KEM-768 seed); ValueError if malformed."""
        require_mlkem()
        if not isinstance(secret, (bytes, bytearray, memoryview)):
            raise TypeError("an identity's secret must be bytes, not %s" % type(secret).__name__)
        secret = bytes(secret)
        if len(secret) != SECRET_KEY_SIZE:
            raise ValueError("an identity's secret must be %d bytes, got %d" % (SECRET_KEY_SIZE, len(secret)))
        self._x25519 = X25519PrivateKey.from_private_bytes(secret[:X25519_KEY_SIZE])
        self._mlkem = MLKEM768PrivateKey.from_seed_bytes(secret[X25519_KEY_SIZE:])
        self.recipient = Recipient(_raw_public(self._x25519.public_key()), _raw_public(self._mlkem.public_key()))

    def __repr__(self) -> str:
        return "Identity(%s)" % self.recipient.recipient_id

    def __reduce__(self) -> Any:
        raise TypeError("an Identity holds secret keys and is not pickled")

    @property
    def recipient_id(self) -> str:
        """The recipient id of this identity's public key."""
        return self.recipient.recipient_id

    def secret_line(self) -> str:
        """SECRET: the identity's line of an identity file, ``QKPQ1-SECRET-`` + base64 of the 96 secret bytes."""
        secret = self._x25519.private_bytes_raw() + self._mlkem.private_bytes_raw()
        return SECRET_KEY_PREFIX + crypto.b64_text(secret)

    def key_exchange(self, ephemeral_public: bytes, kem_ciphertext: bytes) -> bytes:
        """ML-KEM secret || X25519 secret of one slot (what :meth:`Recipient.encapsulate` made).

        ValueError if the ephemeral key is of low order. A foreign ciphertext gives a
        pseudo-random secret (ML-KEM's implicit rejection), which the wrap then rejects.
        """
        kem_secret = self._mlkem.decapsulate(kem_ciphertext)
        x_secret = self._x25519.exchange(X25519PublicKey.from_public_bytes(ephemeral_public))
        return kem_secret + x_secret


def generate_identity() -> Identity:
    """A new random identity (for `quankey-backup keygen`)."""
    require_mlkem()
    return Identity(os.urandom(X25519_KEY_SIZE) + MLKEM768PrivateKey.generate().private_bytes_raw())


def identity_from_secret(secret: bytes) -> Identity:
    """The identity of 96 secret bytes (X25519 private key || ML-KEM-768 seed); for test vectors and tools."""
    return Identity(secret)


def public_key_text(identity_or_recipient: Union[Identity, Recipient]) -> str:
    """The public key text (``qkpq1-pub-...``) of an identity or a recipient."""
    if isinstance(identity_or_recipient, Identity):
        return identity_or_recipient.recipient.text
    if isinstance(identity_or_recipient, Recipient):
        return identity_or_recipient.text
    raise TypeError("expected an Identity or a Recipient, not %s" % type(identity_or_recipient).__name__)


def identity_file_text(identity: Identity, created: Optional[datetime.datetime] = None) -> str:
    """The text of an identity file: comments with the creation time, recipient id and public key, then the secret line.

    ``created`` (an aware datetime) defaults to now; it is only a comment.
    """
    if not isinstance(identity, Identity):
        raise TypeError("expected an Identity, not %s" % type(identity).__name__)
    when = created or datetime.datetime.now(datetime.timezone.utc)
    stamp = when.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return "\n".join([
        "# quankey-backup %s identity (X25519 + ML-KEM-768), created %s by `quankey-backup keygen`" % (ENCRYPTION_NAME, stamp),
        "# SECRET: it opens every backup sealed to the public key below. Keep it mode 0600, off the database hosts.",
        "# recipient id: %s" % identity.recipient_id,
        "# public key (give this to the hosts that take backups): %s" % identity.recipient.text,
        identity.secret_line(),
        "",
    ])


# --------------------------------------------------------------------------- parsing

def parse_recipient(token: Union[str, bytes], where: str) -> Recipient:
    """Decode one public key text (``qkpq1-pub-`` + base64); ConfigError naming ``where``, never the value."""
    require_mlkem()
    if isinstance(token, (bytes, bytearray)):
        token = bytes(token).decode("ascii", "replace")
    text = "".join(str(token if token is not None else "").split())
    if not text:
        raise ConfigError("%s is empty: expected a %s public key (%s...); %s" % (where, ENCRYPTION_NAME, PUBLIC_KEY_PREFIX, _KEYGEN_HINT))
    if text.startswith(SECRET_KEY_PREFIX):
        raise ConfigError("%s is a %s secret key, not a public key: give the hosts only the public key (%s...) and keep the secret on the restore side"
                          % (where, ENCRYPTION_NAME, PUBLIC_KEY_PREFIX))
    if not text.startswith(PUBLIC_KEY_PREFIX):
        raise ConfigError("%s is not a %s public key: expected %s followed by base64; %s" % (where, ENCRYPTION_NAME, PUBLIC_KEY_PREFIX, _KEYGEN_HINT))
    data = _decode_b64(text[len(PUBLIC_KEY_PREFIX):])
    if data is None:
        raise ConfigError("%s is not a valid %s public key: the part after %s is not valid base64 (copy it again from the keygen output)"
                          % (where, ENCRYPTION_NAME, PUBLIC_KEY_PREFIX))
    if len(data) != PUBLIC_KEY_TEXT_SIZE:
        raise ConfigError("%s is not a valid %s public key: it decodes to %d bytes instead of %d (copy it again from the keygen output)"
                          % (where, ENCRYPTION_NAME, len(data), PUBLIC_KEY_TEXT_SIZE))
    public, check = data[:PUBLIC_KEY_SIZE], data[PUBLIC_KEY_SIZE:]
    if _checksum(public) != check:
        raise ConfigError("%s is not a valid %s public key: its checksum does not match, so it was altered or mistyped (copy it again from the keygen output)"
                          % (where, ENCRYPTION_NAME))
    recipient = None
    try:
        recipient = Recipient(public[:X25519_KEY_SIZE], public[X25519_KEY_SIZE:])
    except ValueError:
        pass  # raised below, outside the handler
    if recipient is None:
        raise ConfigError("%s is not a valid %s public key: its ML-KEM-768 part is rejected; %s" % (where, ENCRYPTION_NAME, _KEYGEN_HINT))
    return recipient


def split_tokens(value: Any) -> List[str]:
    """The tokens of a setting: a string of tokens separated by commas and/or whitespace, or a list of such strings."""
    if value is None:
        return []
    parts = value if isinstance(value, (list, tuple)) else [value]
    tokens = []
    for part in parts:
        if part is None:
            continue
        tokens.extend(token for token in _SEPARATORS.split(str(part)) if token)
    return tokens


def parse_recipients(value: Any, label: str = RECIPIENTS_NAME) -> List[Recipient]:
    """The recipients of a setting (see :func:`split_tokens`), duplicates collapsed; a bad one is named by its position."""
    tokens = split_tokens(value)
    found: Dict[str, Recipient] = {}
    for number, token in enumerate(tokens, 1):
        where = label if len(tokens) == 1 else "%s (key %d of %d)" % (label, number, len(tokens))
        recipient = parse_recipient(token, where)
        found.setdefault(recipient.recipient_id, recipient)
    if len(found) > MAX_RECIPIENTS:
        raise ConfigError("%s lists %d different recipients: at most %d are allowed" % (label, len(found), MAX_RECIPIENTS))
    return list(found.values())


def _parse_secret_line(token: str, where: str) -> Identity:
    """Decode one ``QKPQ1-SECRET-`` line; ConfigError naming ``where``, never the value."""
    if token.startswith(PUBLIC_KEY_PREFIX):
        raise ConfigError("%s is a %s public key, not an identity: an identity file holds the %s... line written by `quankey-backup keygen`"
                          % (where, ENCRYPTION_NAME, SECRET_KEY_PREFIX))
    if not token.startswith(SECRET_KEY_PREFIX):
        raise ConfigError("%s is not a %s identity: expected a line starting with %s, as written by `quankey-backup keygen`"
                          % (where, ENCRYPTION_NAME, SECRET_KEY_PREFIX))
    secret = _decode_b64(token[len(SECRET_KEY_PREFIX):])
    if secret is None:
        raise ConfigError("%s is not a valid %s identity: the part after %s is not valid base64" % (where, ENCRYPTION_NAME, SECRET_KEY_PREFIX))
    if len(secret) != SECRET_KEY_SIZE:
        raise ConfigError("%s is not a valid %s identity: it decodes to %d bytes instead of %d" % (where, ENCRYPTION_NAME, len(secret), SECRET_KEY_SIZE))
    identity = None
    try:
        identity = Identity(secret)
    except ValueError:
        pass  # raised below, outside the handler
    if identity is None:
        raise ConfigError("%s is not a valid %s identity: its keys are rejected" % (where, ENCRYPTION_NAME))
    return identity


def parse_identity_text(text: str, origin: str) -> List[Identity]:
    """Identities of an identity file's text: one ``QKPQ1-SECRET-`` line each; blank lines and '#' comments are ignored."""
    require_mlkem()
    identities = []
    for number, line in enumerate(text.splitlines(), 1):
        token = line.split("#", 1)[0].strip()
        if token:
            identities.append(_parse_secret_line(token, "%s line %d" % (origin, number)))
    return identities


def read_identity_file(path: str, label: str = IDENTITY_FILE_NAME) -> List[Identity]:
    """The identities of an identity file, refused unless it is mode 0600 or stricter (no access for group or others)."""
    require_mlkem()
    text = read_private_file(path, "identity file", label, "%s (it writes the file with mode 0600)" % _KEYGEN_HINT,
                             "it should hold the %s... line written by `quankey-backup keygen`" % SECRET_KEY_PREFIX,
                             holds="a secret key")
    identities = parse_identity_text(text, "identity file %s" % path)
    if not identities:
        raise ConfigError("identity file %s (%s) holds no identity: it should hold the %s... line written by `quankey-backup keygen`"
                          % (path, label, SECRET_KEY_PREFIX))
    return identities


# --------------------------------------------------------------------------- envelope

def _unique(items: Any, kind: type, what: str) -> List[Any]:
    """One object or a sequence of them, as a list without duplicate recipient ids (first kept)."""
    if isinstance(items, kind):
        items = [items]
    found: Dict[str, Any] = {}
    for item in items:
        if not isinstance(item, kind):
            raise TypeError("expected %s objects, not %s" % (what, type(item).__name__))
        found.setdefault(item.recipient_id, item)
    return list(found.values())


def seal_data_key(recipients: Union[Recipient, Sequence[Recipient]], data_key: bytes,
                  binding: Optional[bytes] = None) -> Dict[str, Any]:
    """Seal a data key to 1 to 16 recipients; return the envelope dict stored in the backup metadata (JSON-ready).

    With ``binding`` (from :func:`crypto.backup_binding`) the envelope is format version 2
    (``ENVELOPE_TYPE_V2``): every slot opens only for that backup. Without it, version 1
    (``ENVELOPE_TYPE``), kept for compatibility; new backups use version 2.
    """
    require_mlkem()
    data_key = crypto.check_key(data_key, "data key")
    if binding is not None:
        binding = crypto.check_binding(binding)
    unique = _unique(recipients, Recipient, "Recipient")
    if not unique:
        raise ConfigError("no %s recipient given: at least one public key (%s...) is needed to seal a backup" % (ENCRYPTION_NAME, PUBLIC_KEY_PREFIX))
    if len(unique) > MAX_RECIPIENTS:
        raise ConfigError("%d %s recipients given: an envelope holds at most %d" % (len(unique), ENCRYPTION_NAME, MAX_RECIPIENTS))
    return {"type": ENVELOPE_TYPE if binding is None else ENVELOPE_TYPE_V2,
            "recipients": [_seal_slot(recipient, data_key, binding) for recipient in unique]}


def _seal_slot(recipient: Recipient, data_key: bytes, binding: Optional[bytes] = None) -> Dict[str, str]:
    """One recipient's slot of the envelope (format version 2 when ``binding`` is given)."""
    exchanged = None
    try:
        exchanged = recipient.encapsulate()
    except ValueError:
        pass  # raised below, outside the handler
    if exchanged is None:
        raise ConfigError("recipient %s has an unusable X25519 public key (of low order): replace it with a new one; %s"
                          % (recipient.recipient_id, _KEYGEN_HINT))
    ephemeral_public, kem_ciphertext, ikm = exchanged
    rid = recipient.recipient_id
    salt = os.urandom(crypto.SALT_SIZE)
    nonce = os.urandom(crypto.NONCE_SIZE)
    version = 1 if binding is None else 2
    kek = _kek(ikm, salt, rid, ephemeral_public, _raw_public(recipient.x25519_public_key), kem_ciphertext, version=version)
    wrapped = AESGCM(kek).encrypt(nonce, data_key, _wrap_aad(rid, binding))
    b64 = crypto.b64_text
    return {
        "recipient_id": rid,
        "ephemeral_public": b64(ephemeral_public),
        "kem_ciphertext": b64(kem_ciphertext),
        "salt": b64(salt),
        "nonce": b64(nonce),
        "wrapped_key": b64(wrapped),
    }


def _slot_field(slot: Dict[str, Any], index: int, field: str, size: int) -> bytes:
    """Decode one base64 field of slot ``index``, checking its decoded length."""
    name = "recipients[%d].%s" % (index, field)
    value = slot.get(field)
    if value is None:
        raise IntegrityError("encryption envelope field '%s' is missing" % name)
    if not isinstance(value, str):
        raise IntegrityError("encryption envelope field '%s' is not a string" % name)
    decoded = _decode_b64(value)
    if decoded is None:
        raise IntegrityError("encryption envelope field '%s' is not valid base64" % name)
    if len(decoded) != size:
        raise IntegrityError("encryption envelope field '%s' decodes to %d bytes instead of %d" % (name, len(decoded), size))
    return decoded


def _parse_envelope(envelope: Any) -> List[Dict[str, Any]]:
    """Validate a hybrid-pq envelope (format version 1 or 2); return its slots with decoded fields (and ``index``)."""
    if not isinstance(envelope, dict):
        raise IntegrityError("encryption envelope is not a JSON object")
    kind = envelope.get("type")
    if kind is None:
        raise IntegrityError("encryption envelope field 'type' is missing")
    if kind in (crypto.ENVELOPE_TYPE, crypto.ENVELOPE_TYPE_V2):
        raise IntegrityError("encryption envelope field 'type' is %r: this backup's data key is wrapped with a master key, "
                             "not sealed to %s recipients: open it with the master key" % (kind, ENCRYPTION_NAME))
    if kind not in (ENVELOPE_TYPE, ENVELOPE_TYPE_V2):
        shown = kind if isinstance(kind, str) and len(kind) <= 64 else type(kind).__name__
        raise IntegrityError("encryption envelope field 'type' is %r: this reader expects %r or %r"
                             % (shown, ENVELOPE_TYPE, ENVELOPE_TYPE_V2))
    raw_slots = envelope.get("recipients")
    if raw_slots is None:
        raise IntegrityError("encryption envelope field 'recipients' is missing")
    if not isinstance(raw_slots, list):
        raise IntegrityError("encryption envelope field 'recipients' is not a list")
    if not 1 <= len(raw_slots) <= MAX_RECIPIENTS:
        raise IntegrityError("encryption envelope field 'recipients' lists %d recipients: it must list 1 to %d" % (len(raw_slots), MAX_RECIPIENTS))
    slots = []
    seen: Dict[str, int] = {}
    for index, raw in enumerate(raw_slots):
        if not isinstance(raw, dict):
            raise IntegrityError("encryption envelope field 'recipients[%d]' is not a JSON object" % index)
        rid = raw.get("recipient_id")
        if rid is None:
            raise IntegrityError("encryption envelope field 'recipients[%d].recipient_id' is missing" % index)
        if not isinstance(rid, str) or not _RECIPIENT_ID_RE.match(rid):
            raise IntegrityError("encryption envelope field 'recipients[%d].recipient_id' is not a recipient id (%s and 16 hex digits)"
                                 % (index, RECIPIENT_ID_PREFIX))
        if rid in seen:
            raise IntegrityError("encryption envelope lists recipient %s twice (recipients[%d] and recipients[%d])" % (rid, seen[rid], index))
        seen[rid] = index
        slot: Dict[str, Any] = {"index": index, "recipient_id": rid}
        for field, size in _SLOT_FIELDS:
            slot[field] = _slot_field(raw, index, field, size)
        slots.append(slot)
    return slots


def envelope_recipient_ids(envelope: Dict[str, Any]) -> List[str]:
    """The recipient ids a hybrid-pq envelope (version 1 or 2) is sealed to, in envelope order; IntegrityError if it is malformed."""
    return [slot["recipient_id"] for slot in _parse_envelope(envelope)]


def _try_open(identity: Identity, slot: Dict[str, Any], binding: Optional[bytes] = None) -> Optional[bytes]:
    """The data key if ``identity`` opens ``slot`` (bound to its own recipient id, and for version 2 to ``binding``), else None."""
    try:
        ikm = identity.key_exchange(slot["ephemeral_public"], slot["kem_ciphertext"])
    except ValueError:
        return None
    rid = identity.recipient_id
    version = 1 if binding is None else 2
    kek = _kek(ikm, slot["salt"], rid, slot["ephemeral_public"], _raw_public(identity.recipient.x25519_public_key), slot["kem_ciphertext"],
               version=version)
    try:
        return AESGCM(kek).decrypt(slot["nonce"], slot["wrapped_key"], _wrap_aad(rid, binding))
    except InvalidTag:
        return None


def _listing(ids: Sequence[str], one: str, many: str) -> str:
    """'recipient X' or 'recipients X, Y'."""
    return "%s %s" % (one if len(ids) == 1 else many, ", ".join(ids))


def open_data_key(identities: Union[Identity, Sequence[Identity]], envelope: Dict[str, Any], name: str = IDENTITY_FILE_NAME,
                  binding: Optional[bytes] = None) -> bytes:
    """Recover a backup's data key from a hybrid-pq envelope with one identity or several.

    ``binding`` (from :func:`crypto.backup_binding`) is the identity of the backup being
    read; a version 2 envelope needs it (TypeError without: a caller bug), a version 1
    envelope ignores it. Raises IntegrityError for a malformed envelope, WrongKeyError if
    no identity given is one of its recipients (``name`` says which setting to fix), and
    TamperedError if an identity whose id is a recipient does not open its slot (for
    version 2: the metadata belongs to another backup, or was modified).
    """
    require_mlkem()
    slots = _parse_envelope(envelope)
    version = crypto.envelope_version(envelope)
    if binding is not None:
        binding = crypto.check_binding(binding)
    if version == 1:
        binding = None
    elif binding is None:
        raise TypeError("a format version 2 envelope (%s) opens only with its backup's binding: "
                        "pass binding=crypto.backup_binding(host, database, name)" % ENVELOPE_TYPE_V2)
    ring = _unique(identities, Identity, "Identity")
    if not ring:
        raise ConfigError("no %s identity given: set %s to the identity file written by `quankey-backup keygen`" % (ENCRYPTION_NAME, name))
    by_id = dict((identity.recipient_id, identity) for identity in ring)
    matched = [slot for slot in slots if slot["recipient_id"] in by_id]
    for slot in matched:
        data_key = _try_open(by_id[slot["recipient_id"]], slot, binding)
        if data_key is not None:
            return data_key
    if matched:
        ids = [slot["recipient_id"] for slot in matched]
        given = "the identity given with that id does not open it" if len(ids) == 1 else "the identities given with those ids do not open them"
        if version == 2:
            raise TamperedError("this backup's data key is sealed to %s and %s for this backup: "
                                "the metadata was copied from another backup (another host, database or name) or modified"
                                % (_listing(ids, "recipient", "recipients"), given))
        raise TamperedError("this backup's data key is sealed to %s and %s: the encryption envelope in the metadata was modified or corrupted"
                            % (_listing(ids, "recipient", "recipients"), given))
    for slot in slots:  # none names an identity given: was one of them sealed to it under another id?
        for identity in ring:
            if _try_open(identity, slot, binding) is not None:
                raise TamperedError("encryption envelope field 'recipients[%d].recipient_id' says %s but the slot was sealed to the identity %s given: "
                                    "the encryption envelope in the metadata was modified or corrupted"
                                    % (slot["index"], slot["recipient_id"], identity.recipient_id))
    wanted = [slot["recipient_id"] for slot in slots]
    given = [identity.recipient_id for identity in ring]
    raise WrongKeyError("this backup's data key is sealed to %s; %s: set %s to the identity of one of its recipients"
                        % (_listing(wanted, "recipient", "recipients"),
                           ("the identity given is %s" if len(given) == 1 else "the identities given are %s") % ", ".join(given), name))
