# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Files that hold secrets (keyring and identity files): read only when nobody but their owner can read them."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import stat

from .errors import ConfigError


def read_private_file(path, kind, label, missing_hint, content_hint, holds="keys"):
    """The text of a file that holds secrets (a keyring or identity file), refused unless only its owner can read it.

    ``kind`` names the file in messages ("keyring file"), ``label`` the setting that points at it;
    ``missing_hint`` says how to make it, ``content_hint`` what it should hold. Raises ConfigError.
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise ConfigError("%s %s (%s) does not exist: %s" % (kind, path, label, missing_hint))
    except OSError as exc:
        raise ConfigError("cannot read %s %s (%s): %s" % (kind, path, label, exc.strerror or exc))
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError("%s %s (%s) is not a regular file" % (kind, path, label))
    mode = stat.S_IMODE(info.st_mode)
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError("%s %s is mode %04o and holds %s: refused until only its owner can read it: chmod 0600 %s"
                          % (kind, path, mode, holds, path))
    try:
        with open(path, "r", encoding="utf-8") as handle:
            return handle.read()
    except PermissionError:
        raise ConfigError("cannot read %s %s (permission denied): run as the backup user or root" % (kind, path))
    except UnicodeDecodeError:
        raise ConfigError("%s %s is not text: %s" % (kind, path, content_hint))
