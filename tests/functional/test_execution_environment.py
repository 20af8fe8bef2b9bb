# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""An execution environment for AWX/AAP: ansible-builder accepts the README's definition with this collection.

The README's `execution-environment.yml` and `ee-requirements.yml` (taken from it, so that what users copy is
what is tested) go beside the collection's tarball; `ansible-builder create` writes the build context without a
container engine. The image's galaxy and builder stages are then done here as the Containerfile does them:
`ansible-galaxy collection install -r requirements.yml` from the context, and the context's own
`introspect.py`, whose output is what the image installs: this collection's Python ranges and system packages.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from bindep.depends import Depends
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
ORIGIN = "# from collection quankey.backup"


def run(argv, cwd=None):
    proc = subprocess.run([str(part) for part in argv], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, check=False)
    assert proc.returncode == 0, "%s failed:\n%s" % (" ".join(str(part) for part in argv), proc.stdout)
    return proc.stdout


def readme_block(name):
    """The README's ```yaml block whose first line is `# <name>`."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"```yaml\n(# %s\b.*?)```" % re.escape(name), text, re.S)
    assert match, "README.md has no ```yaml block starting with '# %s'" % name
    return match.group(1)


def requirement_lines(path):
    lines = (re.sub(r"(^|\s)#.*$", "", line).strip() for line in path.read_text(encoding="utf-8").splitlines())
    return sorted(str(Requirement(line)) for line in lines if line)


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    """The build context `ansible-builder create` made from the README's definition and this checkout's tarball."""
    work = tmp_path_factory.mktemp("ee")
    run([BIN / "ansible-galaxy", "collection", "build", ROOT, "--output-path", work])
    definition = yaml.safe_load(readme_block("execution-environment.yml"))
    tarballs = list(work.glob("quankey-backup-*.tar.gz"))
    assert [path.name for path in tarballs] == [item["src"] for item in definition["additional_build_files"]], (
        "the README's execution-environment.yml names another tarball than `ansible-galaxy collection build` makes")
    (work / "execution-environment.yml").write_text(readme_block("execution-environment.yml"), encoding="utf-8")
    (work / definition["dependencies"]["galaxy"]).write_text(readme_block("ee-requirements.yml"), encoding="utf-8")
    run([BIN / "ansible-builder", "create", "--file", "execution-environment.yml", "--context", "context",
         "--output-filename", "Containerfile"], cwd=work)
    return {"work": work, "build": work / "context" / "_build", "tarball": tarballs[0]}


def test_the_context_installs_the_collection_tarball_and_introspects_it(context):
    build = context["build"]
    copied = build / "collections" / context["tarball"].name
    assert copied.read_bytes() == context["tarball"].read_bytes()
    containerfile = (context["work"] / "context" / "Containerfile").read_text(encoding="utf-8")
    assert "ansible-galaxy collection install" in containerfile and "-r requirements.yml" in containerfile
    assert "introspect.py introspect" in containerfile
    assert 'ARG PYCMD="/usr/bin/python3.12"' in containerfile  # ansible-core 2.21 wants Python >= 3.12


def test_the_image_gets_the_collections_python_ranges_and_system_packages(context, tmp_path):
    # the galaxy stage: WORKDIR is the context's _build, its requirements.yml names the tarball relative to it
    collections = tmp_path / "collections"
    run([BIN / "ansible-galaxy", "collection", "install", "--offline", "--force", "-r", "requirements.yml",
         "--collections-path", collections], cwd=context["build"])
    installed = collections / "ansible_collections" / "quankey" / "backup"
    assert yaml.safe_load((installed / "meta" / "execution-environment.yml").read_text(encoding="utf-8"))[
        "dependencies"] == {"python": "requirements.txt", "system": "bindep.txt"}
    # the builder stage: the context's own introspect.py writes what the final stage installs
    pip_out, bindep_out = tmp_path / "out" / "requirements.txt", tmp_path / "out" / "bindep.txt"
    run([sys.executable, context["build"] / "scripts" / "introspect.py", "introspect",
         "--write-pip=%s" % pip_out, "--write-bindep=%s" % bindep_out, collections])

    pip_lines = pip_out.read_text(encoding="utf-8").splitlines()
    assert pip_lines and all(line.endswith(ORIGIN) for line in pip_lines), pip_lines
    # the ranges, not pins (tests/unit/test_requirements.py: each has a floor and a cap)
    assert requirement_lines(pip_out) == requirement_lines(ROOT / "requirements.txt")

    bindep_lines = [line.replace(ORIGIN, "").strip() for line in bindep_out.read_text(encoding="utf-8").splitlines()]
    depends = Depends("\n".join(bindep_lines) + "\n")
    # what install-from-bindep installs: on an ee-minimal (RHEL) image, and on a Debian-based one
    assert [rule[0] for rule in depends.active_rules(["platform:rpm", "platform:redhat"])] == ["postgresql"]
    assert [rule[0] for rule in depends.active_rules(["platform:dpkg", "platform:debian"])] == ["postgresql-client"]
