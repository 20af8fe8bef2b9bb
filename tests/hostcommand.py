# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Running the installed `quankey-backup` command as a user would, for the functional tests."""

import os
import subprocess
import sys
import uuid
from pathlib import Path

CLI = str(Path(sys.executable).parent / "quankey-backup")


def new_name(stem):
    """A unique database name, S3 prefix or name stem for one test."""
    return "%s_%s" % (stem, uuid.uuid4().hex[:8])


def run_cli(env, *args, check=None):
    """Run the host command with exactly ``env`` (plus PATH, HOME, a UTF-8 locale); returns CompletedProcess with text.

    With ``check``, assert the exit status and show both streams when it differs.
    """
    full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/root"), "LC_ALL": "C.UTF-8"}
    full_env.update(env)
    proc = subprocess.run([CLI] + list(args), env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=300, check=False)
    if check is not None:
        assert proc.returncode == check, "exit %d, wanted %d\nstdout: %s\nstderr: %s" % (
            proc.returncode, check, proc.stdout, proc.stderr)
    return proc
