# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Keys: the keyring, the hybrid-pq identities and recipients, the signing keys, and :class:`KeyContext` (the keys
one run holds, read once when first needed).

The **active key** (``BACKUP_ENCRYPTION_KEY``) wraps the data key of every new
backup. The **keyring** is the active key plus older keys that are still
accepted to open backups (``BACKUP_DECRYPTION_KEYS`` and/or a keyring file,
``BACKUP_KEYRING_FILE``), so a restore or verify works across a rotation.

workflows/rekey.py unwraps each backup's data key with the keyring and wraps it
again with the active key, rewriting only the backup's metadata object (its
``key_id`` and ``envelope``); the data object is never touched (docs/KEYS.md).

Keys are only ever named by their key id (``qk1-...``); no message holds a key.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import logging
import os

from .catalog import trust
from .errors import ConfigError, IntegrityError
from .formats import crypto, modes, recipients, signing
from .secretfiles import read_private_file

LOG = logging.getLogger("quankey_backup")

DECRYPTION_KEYS_NAME = "BACKUP_DECRYPTION_KEYS"
KEYRING_FILE_NAME = "BACKUP_KEYRING_FILE"


class Keyring:
    """The active key (or None) and every key that opens backups, each known by its key id.

    ``passphrases`` keeps each key's text as it was set, for the seed's
    aes-256-cbc backups (OpenSSL ``enc -pass``, which uses the text, not the
    decoded bytes). ``repr`` shows key ids only.
    """

    def __init__(self, active=None, others=(), texts=None):
        self.active = active
        self._by_id = {}
        self.passphrases = []
        texts = list(texts or [])
        for number, key in enumerate(([active] if active is not None else []) + list(others)):
            kid = crypto.key_id(key)
            self._by_id.setdefault(kid, key)
            if number < len(texts) and texts[number] is not None:
                label, text = texts[number]
                if text not in [known for _kid, _label, known in self.passphrases]:
                    self.passphrases.append((kid, label, text))

    def __repr__(self):
        return "Keyring(active=%s, ids=%s)" % (self.active_id, ",".join(self.ids))

    def __len__(self):
        return len(self._by_id)

    def __contains__(self, kid):
        return kid in self._by_id

    @property
    def active_id(self):
        """The active key's id, or None when no active key is set."""
        return crypto.key_id(self.active) if self.active is not None else None

    @property
    def ids(self):
        """Key ids of the keyring, the active key's first."""
        return list(self._by_id)

    @property
    def keys(self):
        """The keys that open backups, the active key first (for crypto.unwrap_data_key)."""
        return list(self._by_id.values())

    def items(self):
        """(key id, key) pairs, the active key first."""
        return list(self._by_id.items())


def split_keys(value):
    """The keys in a setting: a string of keys separated by commas and/or whitespace, or a list of such strings."""
    return recipients.split_tokens(value)  # the same rule as for public keys


def parse_keys(value, label=DECRYPTION_KEYS_NAME, texts=None):
    """Decode the keys of ``value`` (see :func:`split_keys`); a bad one is named by its position, never its value.

    ``texts``, a list, receives ``(where, text)`` of each key (for aes-256-cbc passphrases).
    """
    tokens = split_keys(value)
    keys = []
    for number, token in enumerate(tokens, 1):
        where = label if len(tokens) == 1 else "%s (key %d of %d)" % (label, number, len(tokens))
        keys.append(crypto.parse_master_key(token, where))
        if texts is not None:
            texts.append((where, token))
    return keys


def parse_keyring_text(text, origin, texts=None):
    """Keys of a keyring file's text: one base64 key per line; blank lines and '#' comments are ignored."""
    keys = []
    for number, line in enumerate(text.splitlines(), 1):
        token = line.split("#", 1)[0].strip()
        if token:
            where = "%s line %d" % (origin, number)
            keys.append(crypto.parse_master_key(token, where))
            if texts is not None:
                texts.append((where, token))
    return keys


def read_keyring_file(path, label=KEYRING_FILE_NAME, texts=None):
    """The keys of a keyring file, refused unless it is mode 0600 or stricter (no access for group or others)."""
    text = read_private_file(path, "keyring file", label, "create it with one base64 key per line, mode 0600",
                             "it should hold one base64 key per line")
    return parse_keyring_text(text, "keyring file %s" % path, texts)


def configured(settings):
    """Whether any master key is set (active, decryption keys or keyring file)."""
    return bool(settings.encryption_key or split_keys(settings.decryption_keys) or settings.keyring_file)


def holds_any_key(settings):
    """Whether any key is configured here: master keys, an identity file, recipients or a signing key."""
    return bool(configured(settings) or settings.identity_file or settings.recipients or settings.signing_key
                or settings.seed_passphrase)


def keyring(settings, require_active=False):
    """The keyring of ``settings``: the active key (BACKUP_ENCRYPTION_KEY) and the older keys.

    Raises ConfigError for an invalid key or keyring file, or when no key at all
    is set (or no active key, with ``require_active``).
    """
    active = None
    texts = []
    if settings.encryption_key not in (None, "") or require_active:
        settings.require("encryption_key")
        try:
            active = crypto.parse_master_key(settings.encryption_key, settings.label("encryption_key"))
        except ConfigError as exc:
            if settings.encryption_key in (None, ""):
                raise
            raise ConfigError("%s; if it is the seed's passphrase (the text its scripts gave openssl enc), keep that text "
                              "as %s and make a new master key here" % (exc.message, settings.label("seed_passphrase")))
        texts.append((settings.label("encryption_key"), "".join(str(settings.encryption_key).split())))
    others = parse_keys(settings.decryption_keys, settings.label("decryption_keys"), texts)
    if settings.keyring_file:
        others += read_keyring_file(settings.keyring_file, settings.label("keyring_file"), texts)
    ring = Keyring(active, others, texts)
    if not len(ring):
        settings.require("encryption_key")  # raises: no key at all
    return ring


def passphrase_texts(settings):
    """``[(label, text)]``: every text that may be an aes-256-cbc passphrase here, without duplicates.

    BACKUP_SEED_PASSPHRASE first, then BACKUP_ENCRYPTION_KEY exactly as written (the seed's
    ``openssl enc -pass env:BACKUP_ENCRYPTION_KEY`` used the text, whatever its shape: base64, hex or
    words), then each older key's text (BACKUP_DECRYPTION_KEYS, the keyring file). A key's text with
    its whitespace removed follows it when that differs (what our own aes-256-cbc backups use).
    """
    found = []
    if settings.seed_passphrase:
        found.append((settings.label("seed_passphrase"), str(settings.seed_passphrase)))
    if settings.encryption_key not in (None, ""):
        found.append((settings.label("encryption_key"), str(settings.encryption_key)))
    tokens = split_keys(settings.decryption_keys)
    for number, token in enumerate(tokens, 1):
        label = settings.label("decryption_keys")
        found.append((label if len(tokens) == 1 else "%s (key %d of %d)" % (label, number, len(tokens)), token))
    if settings.keyring_file:
        origin = "keyring file %s" % settings.keyring_file
        text = read_private_file(settings.keyring_file, "keyring file", settings.label("keyring_file"),
                                 "create it with one key per line, mode 0600", "it should hold one key per line")
        for number, line in enumerate(text.splitlines(), 1):
            token = line.split("#", 1)[0].strip()
            if token:
                found.append(("%s line %d" % (origin, number), token))
    texts, seen = [], set()
    for label, text in found:
        for variant in (text, "".join(text.split())):
            if variant and variant not in seen:
                seen.add(variant)
                texts.append((label, variant))
    return texts


def _text_key_id(text):
    """The key id of a key's text when it is a master key, else None."""
    try:
        return crypto.key_id(crypto.parse_master_key(text))
    except ConfigError:
        return None


def opening_keys_label(settings):
    """How to name the keys in a wrong-key error: the active key's setting, and the keyring's when one is set."""
    label = settings.label("encryption_key")
    extra = [settings.label(field) for field in ("decryption_keys", "keyring_file") if getattr(settings, field)]
    if not extra:
        return label
    return "%s or %s" % (label, " or ".join(extra))


def keygen(path):
    """Make a hybrid-pq identity and write it to a new file at ``path``, mode 0600 from the start (never overwritten).

    Returns the file, recipient id and public key (JSON-ready; no secret).
    """
    identity = recipients.generate_identity()
    text = recipients.identity_file_text(identity)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError("%s already exists: keygen never overwrites a private key; choose another --output, or move "
                          "the old file away if it is truly not needed (backups sealed to it need it to restore)" % path)
    except OSError as exc:
        raise ConfigError("cannot create %s: %s" % (path, exc.strerror or exc))
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        os.unlink(path)
        raise
    return {"identity_file": path, "recipient_id": identity.recipient_id,
            "public_key": recipients.public_key_text(identity)}


# --------------------------------------------------------------------------- everything a host holds

class KeyContext:
    """Every key of one run, each read once when first needed (so a host that seals to recipients needs no master key).

    - ``ring``: the master keys (active + older), possibly empty;
    - ``identities``: hybrid-pq private keys (``BACKUP_IDENTITY_FILE``), possibly empty;
    - ``recipients``: hybrid-pq public keys new backups are sealed to (``BACKUP_RECIPIENTS``);
    - the signing keys: ``BACKUP_SIGNING_KEY`` and one derived from each master key (signing.py).
    """

    def __init__(self, settings):
        self.settings = settings
        self._ring = None
        self._identities = None
        self._recipients = None
        self._signing = None

    def __repr__(self):
        return "KeyContext(encryption=%s)" % self.settings.encryption

    @property
    def ring(self):
        """The master keyring (empty when no master key is set)."""
        if self._ring is None:
            self._ring = keyring(self.settings) if configured(self.settings) else Keyring()
        return self._ring

    @property
    def identities(self):
        """The hybrid-pq identities of BACKUP_IDENTITY_FILE (empty when it is not set)."""
        if self._identities is None:
            path = self.settings.identity_file
            self._identities = recipients.read_identity_file(path, self.settings.label("identity_file")) if path else []
        return self._identities

    @property
    def recipients(self):
        """The hybrid-pq recipients new backups are sealed to (empty when BACKUP_RECIPIENTS is not set)."""
        if self._recipients is None:
            self._recipients = recipients.parse_recipients(self.settings.recipients, self.settings.label("recipients"))
        return self._recipients

    def active_ring(self):
        """The master keyring, which must have an active key (ConfigError naming BACKUP_ENCRYPTION_KEY otherwise)."""
        if self.ring.active is None:
            self.settings.require("encryption_key")
        return self.ring

    def known_ids(self):
        """Ids of every key that can open (master keys, identities) or was chosen to seal (recipients) here."""
        ids = list(self.ring.ids)
        ids += [identity.recipient_id for identity in self.identities]
        ids += [recipient.recipient_id for recipient in self.recipients]
        return list(dict.fromkeys(ids))

    # -- sealing and opening data keys

    def mode(self):
        """The mode new backups are written in here (formats.modes)."""
        return modes.get(self.settings.encryption)

    def require_sealing(self):
        """Check that new backups can be written in the configured mode and their metadata signed; raise ConfigError."""
        self.mode().require(self)

    def active_key_id(self):
        """The id new backups are written with (the active key's, or the first recipient's in hybrid-pq mode)."""
        return self.mode().active_key_id(self)

    def opening_keys_label(self):
        """How to name the master keys in a wrong-key error (see :func:`opening_keys_label`)."""
        return opening_keys_label(self.settings)

    def open(self, record):
        """The data key of a backup with one (aes-256-gcm or hybrid-pq), from the envelope in its loaded metadata.

        The backup's identity comes from where it is stored (``record``'s host, database and name), never from
        the document: a version-2 envelope copied to another backup's place does not open.
        Raises WrongKeyError when no key held here opens it, TamperedError when the matching key fails.
        """
        envelope = record.metadata.get("envelope")
        binding = identity_binding(record) if envelope_version(record.metadata) == 2 else None
        return modes.for_envelope(envelope).open_data_key(self, record, binding)

    def passphrases(self, metadata=None):
        """``[(label, passphrase bytes)]`` to try on an aes-256-cbc object (see :func:`passphrase_texts`).

        For one of our own aes-256-cbc backups the key its metadata names comes first. No key has to
        be a valid master key: the seed's passphrase is any text.
        """
        texts = passphrase_texts(self.settings)
        if not texts:
            self.settings.require("seed_passphrase")
        wanted = wrapping_key_id(metadata)
        if wanted:
            texts.sort(key=lambda item: _text_key_id(item[1]) != wanted)
        return [(label, text.encode("utf-8")) for label, text in texts]

    def cbc_passphrase(self):
        """``(key id, passphrase bytes)`` of the active key, for a new aes-256-cbc backup."""
        ring = self.active_ring()
        kid, _label, text = ring.passphrases[0]
        return kid, text.encode("utf-8")

    # -- signing metadata

    def signing_keys(self):
        """``(active id, active key, {key id: key})``: BACKUP_SIGNING_KEY first, then one derived from each master key.

        BACKUP_SIGNING_KEY may list older signing keys after the active one (commas or spaces):
        they still verify metadata they signed, until rekey has re-signed it with the active one.
        """
        if self._signing is None:
            by_id = {}
            active_id = active = None
            for key in parse_keys(self.settings.signing_key, self.settings.label("signing_key")):
                kid = signing.signing_key_id(key)
                if active is None:
                    active_id, active = kid, key
                by_id.setdefault(kid, key)
            for kid, master in self.ring.items():
                by_id.setdefault(kid, signing.derive_signing_key(master))
            if active is None and self.ring.active is not None:
                active_id, active = self.ring.active_id, by_id[self.ring.active_id]
            self._signing = (active_id, active, by_id)
        return self._signing

    def signer(self):
        """``(key id, key)`` that signs new metadata; ConfigError when there is none."""
        active_id, active, _by_id = self.signing_keys()
        if active is None:
            raise ConfigError("no key to sign the backup's metadata with: set %s (base64 of 32 random bytes, "
                              "`openssl rand -base64 32`) here and where backups are restored and checked; "
                              "hybrid-pq hosts hold no master key to derive one from" % self.settings.label("signing_key"))
        return active_id, active

    def sign(self, metadata):
        """``metadata`` with its signature made by the active signing key."""
        kid, key = self.signer()
        return signing.sign_metadata(metadata, kid, key)

    def signature_fix(self):
        """Where to set the key that verifies a backup signed with a key not held here."""
        return ("set %s to the signing key of the hosts that made it, or add the master key of that id to %s"
                % (self.settings.label("signing_key"), self.settings.label("decryption_keys")))

    def verdict(self, record):
        """The one trust verdict (trust.judge) on a record whose metadata is loaded, with the signing keys held here.

        A seed backup's verdict needs no key (it has no signature), so a seed host's passphrase that is
        not a master key does not stand in the way of reading its backups.
        """
        if record.seed:
            return trust.judge(record, None)
        return trust.judge(record, self.signing_keys()[2], self.signature_fix())


def identity_binding(record):
    """The bytes that bind a data key to the backup stored at ``record``'s place (host, database, name)."""
    return crypto.backup_binding(record.host, record.db, record.basename)


def wrapping_key_id(metadata):
    """The id of the key that wrapped (or, for aes-256-cbc, encrypted) a backup's data: the envelope's, else the metadata's."""
    if not isinstance(metadata, dict):
        return None
    envelope = metadata.get("envelope")
    kid = envelope.get("key_id") if isinstance(envelope, dict) else None
    return kid or metadata.get("key_id")


def wrapping_ids(metadata):
    """Every id a backup's data key is wrapped or sealed with (recipient ids for hybrid-pq), [] when unknown."""
    envelope = metadata.get("envelope") if isinstance(metadata, dict) else None
    try:
        return modes.for_envelope(envelope).wrapping_ids(envelope)
    except IntegrityError:  # not a known envelope: its key id field (or the metadata's) is all there is to go by
        kid = wrapping_key_id(metadata)
        return [kid] if kid else []


def envelope_version(metadata):
    """1 or 2: the format version of a backup's envelope (0 when it is not a data-key envelope)."""
    try:
        return crypto.envelope_version(metadata.get("envelope"))
    except IntegrityError:
        return 0
