# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Keys and rotation: the keyring, and re-wrapping backups' data keys to the active key (rekey).

The **active key** (``BACKUP_ENCRYPTION_KEY``) wraps the data key of every new
backup. The **keyring** is the active key plus older keys that are still
accepted to open backups (``BACKUP_DECRYPTION_KEYS`` and/or a keyring file,
``BACKUP_KEYRING_FILE``), so a restore or verify works across a rotation.

:func:`run_rekey` unwraps each backup's data key with the keyring and wraps it
again with the active key, rewriting only the backup's metadata object (its
``key_id`` and ``envelope``); the data object is never touched (docs/KEYS.md).

Keys are only ever named by their key id (``qk1-...``); no message holds a key.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import logging
import os
import re
import stat

from . import catalog
from . import crypto
from .errors import BackupError, ConfigError, IntegrityError

LOG = logging.getLogger("quankey_backup")

DECRYPTION_KEYS_NAME = "BACKUP_DECRYPTION_KEYS"
KEYRING_FILE_NAME = "BACKUP_KEYRING_FILE"

# Rekey outcomes of one backup.
REKEYED, WOULD_REKEY, UNCHANGED, FAILED = "rekeyed", "would rekey", "unchanged", "failed"

_SEPARATORS = re.compile(r"[\s,]+")


class Keyring:
    """The active key (or None) and every key that opens backups, each known by its key id.

    ``repr`` shows key ids only.
    """

    def __init__(self, active=None, others=()):
        self.active = active
        self._by_id = {}
        for key in ([active] if active is not None else []) + list(others):
            self._by_id.setdefault(crypto.key_id(key), key)

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


def split_keys(value):
    """The keys in a setting: a string of keys separated by commas and/or whitespace, or a list of such strings."""
    if value is None:
        return []
    parts = value if isinstance(value, (list, tuple)) else [value]
    keys = []
    for part in parts:
        if part is None:
            continue
        keys.extend(token for token in _SEPARATORS.split(str(part)) if token)
    return keys


def parse_keys(value, label=DECRYPTION_KEYS_NAME):
    """Decode the keys of ``value`` (see :func:`split_keys`); a bad one is named by its position, never its value."""
    tokens = split_keys(value)
    keys = []
    for number, token in enumerate(tokens, 1):
        where = label if len(tokens) == 1 else "%s (key %d of %d)" % (label, number, len(tokens))
        keys.append(crypto.parse_master_key(token, where))
    return keys


def parse_keyring_text(text, origin):
    """Keys of a keyring file's text: one base64 key per line; blank lines and '#' comments are ignored."""
    keys = []
    for number, line in enumerate(text.splitlines(), 1):
        token = line.split("#", 1)[0].strip()
        if token:
            keys.append(crypto.parse_master_key(token, "%s line %d" % (origin, number)))
    return keys


def read_keyring_file(path, label=KEYRING_FILE_NAME):
    """The keys of a keyring file, refused unless it is mode 0600 or stricter (no access for group or others)."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise ConfigError("keyring file %s (%s) does not exist: create it with one base64 key per line, mode 0600"
                          % (path, label))
    except OSError as exc:
        raise ConfigError("cannot read keyring file %s (%s): %s" % (path, label, exc.strerror or exc))
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError("keyring file %s (%s) is not a regular file" % (path, label))
    mode = stat.S_IMODE(info.st_mode)
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError("keyring file %s is mode %04o and holds keys: refused until only its owner can read it: "
                          "chmod 0600 %s" % (path, mode, path))
    try:
        with open(path, "r") as handle:
            text = handle.read()
    except PermissionError:
        raise ConfigError("cannot read keyring file %s (permission denied): run as the backup user or root" % path)
    except UnicodeDecodeError:
        raise ConfigError("keyring file %s is not text: it should hold one base64 key per line" % path)
    return parse_keyring_text(text, "keyring file %s" % path)


def configured(settings):
    """Whether any key is set (active, decryption keys or keyring file)."""
    return bool(settings.encryption_key or split_keys(settings.decryption_keys) or settings.keyring_file)


def keyring(settings, require_active=False):
    """The keyring of ``settings``: the active key (BACKUP_ENCRYPTION_KEY) and the older keys.

    Raises ConfigError for an invalid key or keyring file, or when no key at all
    is set (or no active key, with ``require_active``).
    """
    active = None
    if settings.encryption_key not in (None, "") or require_active:
        settings.require("encryption_key")
        active = crypto.parse_master_key(settings.encryption_key, settings.label("encryption_key"))
    others = parse_keys(settings.decryption_keys, settings.label("decryption_keys"))
    if settings.keyring_file:
        others += read_keyring_file(settings.keyring_file, settings.label("keyring_file"))
    ring = Keyring(active, others)
    if not len(ring):
        settings.require("encryption_key")  # raises: no key at all
    return ring


def opening_keys_label(settings):
    """How to name the keys in a wrong-key error: the active key's setting, and the keyring's when one is set."""
    label = settings.label("encryption_key")
    extra = [settings.label(field) for field in ("decryption_keys", "keyring_file") if getattr(settings, field)]
    if not extra:
        return label
    return "%s or %s" % (label, " or ".join(extra))


# --------------------------------------------------------------------------- rekey

def rekey_metadata(metadata, ring, name, basename="backup"):
    """Re-wrap one backup's data key with the active key.

    Returns ``(new metadata or None when already wrapped with the active key, data key, old key id)``.
    Raises IntegrityError (WrongKeyError, TamperedError) when the keyring cannot open it.
    """
    if metadata.get("encryption") != crypto.ENCRYPTION_NAME:
        raise IntegrityError("backup %s uses encryption %r, which this version cannot rekey"
                             % (basename, metadata.get("encryption")))
    envelope = metadata.get("envelope")
    data_key = crypto.unwrap_data_key(ring.keys, envelope, name)
    old_id = envelope["key_id"]
    if old_id == ring.active_id and metadata.get("key_id") == ring.active_id:
        return None, data_key, old_id
    updated = dict(metadata)
    updated["envelope"] = crypto.wrap_data_key(ring.active, data_key)
    updated["key_id"] = ring.active_id
    return updated, data_key, old_id


def check_data_key(header, data_key, basename="backup"):
    """Raise WrongKeyError unless ``data_key`` belongs to the object whose first bytes are ``header`` (key commitment)."""
    opener = crypto.StreamDecryptor(data_key)
    opener.update(header[:crypto.HEADER_SIZE])
    if opener.header is None:
        raise IntegrityError("backup %s: the object is shorter than its %d-byte header" % (basename, crypto.HEADER_SIZE))


def run_rekey(settings, host=None, db=None, everything=False, dry_run=False, store=None):
    """Re-wrap the data keys of backups not wrapped with the active key; only metadata objects are rewritten.

    Scope as ``quankey-backup list``: ``host`` (default this host) and ``db``
    (default DB_NAME), or with ``everything`` the whole bucket (narrowed to ``db``
    when given). Each backup is checked before its metadata is rewritten: the
    keyring must open its data key and that key must match the data object's key
    commitment (a ranged read of its header). A backup that fails is reported and
    the others go on (fail closed per backup). Returns a JSON-ready summary.
    """
    from . import pipeline
    ring = keyring(settings, require_active=True)
    name = settings.label("decryption_keys")  # where the key that made a backup goes, in a wrong-key error
    store = store or pipeline.open_store(settings)
    records, _orphans = pipeline.list_backups(settings, store, host=host, db=db, everything=everything)
    results = []
    for record in records:
        results.append(_rekey_one(store, record, ring, name, dry_run))
    counts = dict((outcome, sum(1 for item in results if item["status"] == outcome))
                  for outcome in (REKEYED, WOULD_REKEY, UNCHANGED, FAILED))
    failed = [item for item in results if item["status"] == FAILED]
    return {
        "active_key_id": ring.active_id, "keyring_key_ids": ring.ids, "dry_run": dry_run, "bucket": store.bucket,
        "backups": results, "rekeyed": counts[REKEYED], "would_rekey": counts[WOULD_REKEY],
        "unchanged": counts[UNCHANGED], "failed": counts[FAILED],
        "changed": bool(counts[REKEYED] or counts[WOULD_REKEY]),
        "exit_code": failed[0]["exit_code"] if failed else 0,
    }


def _rekey_one(store, record, ring, name, dry_run):
    """Rekey one backup (or say what would change); never raises BackupError."""
    from . import pipeline
    item = {"name": record.basename, "host": record.host, "database": record.db, "metadata_key": record.metadata_key,
            "from_key_id": None, "to_key_id": ring.active_id, "status": FAILED}
    try:
        metadata = pipeline.load_metadata(store, record)
        envelope = metadata.get("envelope")
        item["from_key_id"] = envelope.get("key_id") if isinstance(envelope, dict) else None
        updated, data_key, old_id = rekey_metadata(metadata, ring, name, record.basename)
        if updated is None:
            item["status"] = UNCHANGED
            return item
        if not record.has_object:
            raise IntegrityError("backup %s has metadata but its object %s is missing: it cannot be restored, so it is "
                                 "not rekeyed (prune removes it once past retention)" % (record.basename, record.object_key))
        check_data_key(store.get_range(record.object_key, 0, crypto.HEADER_SIZE), data_key, record.basename)
        if dry_run:
            item["status"] = WOULD_REKEY
            return item
        store.put_bytes(record.metadata_key, catalog.encode_metadata(updated))
        item["status"] = REKEYED
        LOG.info("rekeyed %s: data key re-wrapped from key %s to key %s (metadata %s rewritten, data object untouched)",
                 record.basename, old_id, ring.active_id, record.metadata_key)
    except BackupError as exc:
        item["status"] = FAILED
        item["error"] = "%s: %s" % (record.basename, exc)
        item["exit_code"] = exc.exit_code
        LOG.error("rekey of %s failed (left as it was): %s", record.basename, exc)
    return item
