# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The encryption modes, in one registry: nothing else compares a mode's name.

Each mode says what it needs configured to write a backup (:meth:`Mode.require`), how a new backup
is encrypted (:meth:`Mode.new_encryptors`: one key, an encryptor per object), how a backup is opened (:meth:`Mode.opener`), how its
object's first bytes are checked without a key (:meth:`Mode.check_header`), whether its backups can
be rekeyed (:attr:`Mode.rekeyable`), and whether its data is authenticated while it streams
(:attr:`Mode.authenticated`: when not, a restore checks the whole object's SHA-256 first).

A new mode is one format file plus one line in :data:`MODES`. The modes are given a key context
(``keys.KeyContext``: the keys a run holds) and, to open a backup, the store and the record; they
import neither, so this file sits below both.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import functools

from ..errors import IntegrityError, WrongKeyError, in_step
from . import crypto, openssl_enc, recipients


class Mode:
    """What every mode provides (see the module)."""

    name = None
    authenticated = True
    rekeyable = True
    has_data_key = True  # its data is under a per-backup data key, wrapped or sealed in the metadata's envelope
    envelope_types = ()

    def __repr__(self):
        return "Mode(%s)" % self.name

    def require(self, context):
        """Raise ConfigError unless a new backup can be written here in this mode (and its metadata signed)."""
        raise NotImplementedError

    def active_key_id(self, context):
        """The key id new backups are written with here (None when that is not known)."""
        raise NotImplementedError

    def new_encryptors(self, context, identity):
        """``(envelope, key id, recipient ids or None, make)`` of a new backup: ``make()`` gives a fresh streaming
        encryptor under the backup's one key, for each of its objects (the dump, its globals).

        ``identity`` is ``(host, database, name)``: where the backup will be stored, bound into the key wrap.
        Each object made this way has a salt of its own, so one key serves several.
        """
        raise NotImplementedError

    def new_encryptor(self, context, identity):
        """``(envelope, key id, recipient ids or None, streaming encryptor)`` of a new backup of one object."""
        envelope, kid, ids, make = self.new_encryptors(context, identity)
        return envelope, kid, ids, make()

    def opener(self, context, store, record):
        """A function making a fresh decryptor of ``record``'s object, once the keys held are known to open it."""
        raise NotImplementedError

    def check_header(self, head):
        """Raise IntegrityError unless an object's first bytes start an object of this mode (no key needed)."""
        raise NotImplementedError

    def target_ids(self, context):
        """The ids a backup's data key is wrapped or sealed with once rekeyed to this mode here."""
        kid = self.active_key_id(context)
        return [kid] if kid else []

    def why_not_rekeyable(self, context):
        """Why a backup of this mode cannot be rekeyed (one phrase), or None when it can."""
        return None

    def open_data_key(self, context, record, binding):
        """The data key of a backup whose envelope is of this mode (``binding``: its place, format version 2)."""
        raise IntegrityError("backup %s's encryption %s has no data key" % (record.basename, self.name))

    def wrapping_ids(self, envelope):
        """Every id the envelope's data key is wrapped or sealed with (or its passphrase's), [] when it cannot be told."""
        kid = envelope.get("key_id") if isinstance(envelope, dict) else None
        return [kid] if kid else []


class GcmOpener:
    """Makes decryptors of one format v1/v2 object: ``opener()`` a whole-object one, ``opener.ranged(...)`` one for a
    range of its segments (crypto.RangeDecryptor)."""

    def __init__(self, data_key):
        self._data_key = data_key

    def __call__(self):
        return crypto.StreamDecryptor(self._data_key)

    def ranged(self, header, first, last, final):
        return crypto.RangeDecryptor(self._data_key, header, first, last, final)


class MasterKey(Mode):
    """``aes-256-gcm``: format v1/v2 data objects, the data key wrapped with the master key (crypto.py)."""

    name = crypto.ENCRYPTION_NAME
    envelope_types = (crypto.ENVELOPE_TYPE, crypto.ENVELOPE_TYPE_V2)

    def require(self, context):
        context.active_ring()
        context.signer()

    def active_key_id(self, context):
        return context.active_ring().active_id

    def _seal(self, context, data_key, binding):
        ring = context.active_ring()
        return crypto.wrap_data_key(ring.active, data_key, binding=binding), ring.active_id, None

    def new_encryptors(self, context, identity):
        data_key = crypto.new_data_key()
        envelope, kid, ids = self._seal(context, data_key, crypto.backup_binding(*identity))
        return envelope, kid, ids, functools.partial(crypto.StreamEncryptor, data_key)

    def reseal(self, context, data_key, identity):
        """``(envelope, key id, recipient ids or None)`` of an existing data key, for rekey (always format version 2)."""
        return self._seal(context, data_key, crypto.backup_binding(*identity))

    def opener(self, context, store, record):
        return GcmOpener(in_step("decrypt", context.open, record))

    def check_header(self, head):
        crypto.read_header(head)

    def open_data_key(self, context, record, binding):
        if not len(context.ring):
            context.settings.require("encryption_key")
        return crypto.unwrap_data_key(context.ring.keys, record.metadata.get("envelope"), context.opening_keys_label(),
                                      binding=binding)


class Recipients(MasterKey):
    """``hybrid-pq``: the same data objects, the data key sealed to X25519 + ML-KEM-768 public keys (recipients.py)."""

    name = recipients.ENCRYPTION_NAME
    envelope_types = (recipients.ENVELOPE_TYPE, recipients.ENVELOPE_TYPE_V2)

    def require(self, context):
        recipients.require_mlkem()
        if not context.recipients:
            context.settings.require("recipients")
        context.signer()

    def active_key_id(self, context):
        return context.recipients[0].recipient_id if context.recipients else None

    def target_ids(self, context):
        return sorted(recipient.recipient_id for recipient in context.recipients)

    def _seal(self, context, data_key, binding):
        envelope = recipients.seal_data_key(context.recipients, data_key, binding=binding)
        ids = [recipient.recipient_id for recipient in context.recipients]
        return envelope, ids[0], ids

    def open_data_key(self, context, record, binding):
        envelope = record.metadata.get("envelope")
        if not context.identities:
            raise WrongKeyError(
                "backup %s's data key is sealed to recipient(s) %s (hybrid-pq) and no private key is set here: restore "
                "where the private key made by `quankey-backup keygen` is, pointing %s at it"
                % (record.basename, ", ".join(recipients.envelope_recipient_ids(envelope)),
                   context.settings.label("identity_file")))
        return recipients.open_data_key(context.identities, envelope, context.settings.label("identity_file"),
                                        binding=binding)

    def wrapping_ids(self, envelope):
        try:
            return recipients.envelope_recipient_ids(envelope)
        except IntegrityError:
            return []


class OpensslEnc(Mode):
    """``aes-256-cbc``: the seed's OpenSSL ``enc`` format, the passphrase's text as the key (openssl_enc.py)."""

    name = openssl_enc.ENCRYPTION_NAME
    authenticated = False
    rekeyable = False
    has_data_key = False
    envelope_types = (openssl_enc.ENVELOPE_TYPE,)

    def require(self, context):
        context.active_ring()
        context.signer()

    def active_key_id(self, context):
        return context.active_ring().active_id

    def new_encryptors(self, context, identity):
        kid, passphrase = context.cbc_passphrase()
        return openssl_enc.passphrase_envelope(kid), kid, None, functools.partial(openssl_enc.CbcEncryptor, passphrase)

    def opener(self, context, store, record):
        chosen, kdf = self.probe(context, store, record)
        return functools.partial(openssl_enc.CbcDecryptor, [chosen], check_plaintext=openssl_enc.plausible_dump_start,
                                 kdfs=[kdf])

    def probe(self, context, store, record):
        """``(passphrase (label, bytes), Kdf)`` that open the backup, found on its first 32 bytes (a ranged read).

        Our own aes-256-cbc backups record their derivation in the envelope; the seed's do not, so
        theirs is found by trying openssl_enc.probe_kdfs (BACKUP_SEED_KDF first) with every passphrase.
        Sets ``record.kdf`` (what matched, no secret). WrongKeyError when nothing opens it.
        """
        if record.seed:
            wanted = openssl_enc.parse_kdf(context.settings.seed_kdf) if context.settings.seed_kdf else None
            kdfs = openssl_enc.probe_kdfs(wanted)
        else:
            kdfs = [openssl_enc.Kdf("pbkdf2", openssl_enc.DIGEST,
                                    in_step("decrypt", openssl_enc.parse_envelope, record.metadata["envelope"]))]
        phrases = in_step("decrypt", context.passphrases, record.metadata)
        probe = openssl_enc.CbcDecryptor(phrases, check_plaintext=openssl_enc.plausible_dump_start, kdfs=kdfs)
        head = store.get_range(record.object_key, 0, openssl_enc.PROBE_SIZE) if record.object_size else b""
        in_step("decrypt", probe.update, head)
        if probe.passphrase_label is None:
            raise IntegrityError("backup %s's object is %d bytes, too short for an aes-256-cbc backup"
                                 % (record.basename, record.object_size or 0), step="decrypt")
        record.kdf = "%s, passphrase %s" % (probe.kdf.describe(), probe.passphrase_label)
        return phrases[probe.candidate], probe.kdf

    def check_header(self, head):
        openssl_enc.check_header(head)

    def why_not_rekeyable(self, context):
        return ("its data is encrypted with the passphrase itself, so a new key needs a new backup, not a rekey; keep "
                "its key in %s until it expires" % context.settings.label("decryption_keys"))


MODES = dict((mode.name, mode) for mode in (MasterKey(), Recipients(), OpensslEnc()))
NAMES = tuple(MODES)  # the settings' choices
REKEYABLE = tuple(name for name, mode in MODES.items() if mode.rekeyable)
DEFAULT = crypto.ENCRYPTION_NAME


def get(name):
    """The mode of a setting's name (the setting is validated against :data:`NAMES`)."""
    return MODES[name]


def of(metadata, basename="backup"):
    """The mode a backup's metadata records; IntegrityError for one this version cannot read."""
    name = metadata.get("encryption") if isinstance(metadata, dict) else None
    if name not in MODES:
        raise IntegrityError("backup %s uses encryption %r, which this version cannot read: one of %s"
                             % (basename, name, ", ".join(NAMES)), step="decrypt")
    return MODES[name]


def for_envelope(envelope):
    """The mode whose envelope type ``envelope`` has; IntegrityError for an unknown or missing type."""
    kind = envelope.get("type") if isinstance(envelope, dict) else None
    for mode in MODES.values():
        if kind in mode.envelope_types:
            return mode
    raise IntegrityError("encryption envelope type %r is none this version reads" % (kind,))
