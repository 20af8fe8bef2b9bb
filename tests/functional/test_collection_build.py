# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""`ansible-galaxy collection build` gives a clean tarball: the collection, no caches, venvs or test leftovers."""

import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GALAXY = str(Path(sys.executable).parent / "ansible-galaxy")
FORBIDDEN = (".venv/", "venv/", "build/", ".git/", "__pycache__", ".pytest_cache", "tests/output/", ".egg-info", ".ci/")


def test_collection_tarball_is_clean(tmp_path):
    # leave a cache behind on purpose: the build must skip it
    (ROOT / "plugins" / "module_utils" / "__pycache__").mkdir(exist_ok=True)
    proc = subprocess.run([GALAXY, "collection", "build", str(ROOT), "--output-path", str(tmp_path)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, check=False)
    assert proc.returncode == 0, proc.stdout
    tarballs = list(tmp_path.glob("quankey-backup-*.tar.gz"))
    assert len(tarballs) == 1
    with tarfile.open(str(tarballs[0])) as tar:
        names = tar.getnames()
    assert "MANIFEST.json" in names and "meta/runtime.yml" in names
    assert "plugins/module_utils/workflows/backup.py" in names and "plugins/module_utils/formats/__init__.py" in names
    leftovers = [name for name in names if any(bad in name + "/" for bad in FORBIDDEN) or name.endswith((".pyc", ".tar.gz"))]
    assert leftovers == []
