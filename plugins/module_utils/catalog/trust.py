# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which backups may be believed: one verdict per backup, from where it is stored and what signs it.

Trust never comes from a field inside a document. A backup is the seed's only when
its keys lie in the seed's flat layout (``record.seed``, which the listing sets from
the object's key); its metadata is believed only when the signature verifies with a
key held here *and* the document names exactly the backup stored at that place
(host, database, name, object key and timestamp). :func:`judge` gives the verdict
and never raises for what a document holds; :func:`require` turns a verdict into a
refusal unless the caller opted in (``allow_unsigned``, ``allow_seed``). Restore,
verify, rekey, health, backup_info and every module's check mode use these two, so
they give the same verdict for the same backup.

Pure: no S3, no settings (the caller passes the signing keys it holds).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import logging

from ..errors import IntegrityError, TamperedError
from ..formats import signing
from . import layout

LOG = logging.getLogger("quankey_backup")

# Outcomes: the signature's (signing.py), plus the seed's layout and "no key here to check with".
VALID, INVALID, UNSIGNED, UNKNOWN_KEY = signing.VALID, signing.INVALID, signing.UNSIGNED, signing.UNKNOWN_KEY
SEED = "seed"
NOT_CHECKED = "not checked"

ALLOW_UNSIGNED_HINT = "allow unsigned metadata (--allow-unsigned, or allow_unsigned: true)"
ALLOW_SEED_HINT = "allow the seed's backups (--allow-seed, BACKUP_ALLOW_SEED=true, or allow_seed: true)"


class Verdict:
    """The outcome of checking one backup's metadata: ``outcome``, the signing ``key_id`` and the ``problem`` (or None)."""

    __slots__ = ("outcome", "key_id", "problem")

    def __init__(self, outcome, key_id=None, problem=None):
        self.outcome = outcome
        self.key_id = key_id
        self.problem = problem

    def __repr__(self):
        return "Verdict(%s)" % self.describe()

    @property
    def trusted(self):
        """Whether the metadata is signed with a key held here and names the backup stored where it was read."""
        return self.outcome == VALID

    def describe(self):
        """A few words for output: 'valid (key qks-...)', 'unsigned', 'invalid', ..."""
        if self.outcome == VALID:
            return "valid (key %s)" % self.key_id
        if self.outcome == UNKNOWN_KEY:
            return "not verified (signed with key %s, not held here)" % self.key_id
        if self.outcome == SEED:
            return "unsigned (made by the seed's scripts)"
        if self.outcome == NOT_CHECKED:
            return "not checked (no signing key here)"
        return self.outcome


def naming_problem(record):
    """Why a host-layout document does not describe the backup stored where it was read (one line), or None.

    The document must name the host, database, backup name and object key of its own
    place in the bucket, and the time in that name: a document copied to another
    host's, database's or backup's place is caught here, signed or not.
    """
    metadata = record.metadata
    expected = (("host", record.host), ("database", record.db), ("name", record.basename),
                ("object_key", record.object_key), ("timestamp", layout.format_timestamp(record.timestamp)))
    for field, value in expected:
        if metadata.get(field) != value:
            return ("metadata of backup %s (at %s) is not this backup's: its %s is %r where %r is stored, so it was "
                    "copied from another backup (%s/%s/%s) or modified: do not trust it; restore another backup with "
                    "--backup" % (record.basename, record.metadata_key, field, metadata.get(field), value,
                                  metadata.get("host"), metadata.get("database"), metadata.get("name")))
    return None


def judge(record, signing_keys, how_to_fix="set the signing key of the hosts that made it"):
    """The :class:`Verdict` on a record whose metadata is loaded.

    ``signing_keys``: {key id: key} held here, or None when none is configured (the verdict is then
    NOT_CHECKED unless the document is already known to be wrong); ``how_to_fix`` says where to set
    the key when a document is signed with one not held here.
    """
    if record.seed:
        return Verdict(SEED, None, "backup %s was made by the seed's scripts: its metadata is not signed, so neither its "
                                   "checksum nor the database it names can be trusted against someone who can write to "
                                   "the bucket; to use it, %s, or adopt it into this format"
                       % (record.basename, ALLOW_SEED_HINT))
    problem = naming_problem(record)
    kid = signing.signature_key_id(record.metadata)
    if problem:
        return Verdict(INVALID, kid, problem)
    if signing_keys is None:
        return Verdict(NOT_CHECKED, kid, None)
    outcome, kid = signing.verify_metadata(record.metadata, signing_keys)
    if outcome == VALID:
        return Verdict(VALID, kid, None)
    return Verdict(outcome, kid, signing.describe_failure(outcome, kid, record.basename, how_to_fix))


def judge_base(record, signing_keys):
    """The :class:`Verdict` on a physical base backup whose metadata is loaded (catalog/layout.py's BaseRecord): it
    must name its own place (host, name, object key, time) and be signed with a key held here (``signing_keys``:
    {id: key}, or None when none is configured). workflows/basebackup.py and prune's retention ask it."""
    metadata = record.metadata
    expected = (("host", record.host), ("name", record.basename), ("object_key", record.object_key),
                ("timestamp", layout.format_timestamp(record.timestamp)))
    kid = signing.signature_key_id(metadata)
    for field, value in expected:
        if metadata.get(field) != value:
            return Verdict(INVALID, kid, "metadata of base backup %s (at %s) is not this backup's: its %s is %r where %r "
                           "is stored, so it was copied from another backup or modified: do not trust it"
                           % (record.basename, record.metadata_key, field, metadata.get(field), value))
    if signing_keys is None:
        return Verdict(NOT_CHECKED, kid, None)
    outcome, kid = signing.verify_metadata(metadata, signing_keys)
    if outcome == VALID:
        return Verdict(VALID, kid, None)
    return Verdict(outcome, kid, signing.describe_failure(outcome, kid, record.basename,
                                                          "set the signing key of the host that made it"))


def require(verdict, allow_unsigned=False, allow_seed=False):
    """Raise unless the verdict lets a backup be used: invalid never; unsigned/unverified with
    ``allow_unsigned``; the seed's with ``allow_seed``. Logs a warning when an opt-in is what let it through."""
    if verdict.outcome == VALID:
        return
    if verdict.outcome == INVALID:
        raise TamperedError(verdict.problem, step="verify metadata")
    if verdict.outcome == SEED:
        if allow_seed:
            LOG.warning("using a backup made by the seed's scripts: its metadata is unsigned (allowed by --allow-seed)")
            return
        raise IntegrityError(verdict.problem, step="verify metadata")
    if allow_unsigned:
        LOG.warning("%s; going on because unsigned metadata is allowed", verdict.problem or verdict.describe())
        return
    raise IntegrityError("%s; to use it anyway, %s" % (verdict.problem or verdict.describe(), ALLOW_UNSIGNED_HINT),
                         step="verify metadata")
