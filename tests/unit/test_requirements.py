# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The requirement files agree: ranges where the collection meets other collections, pins where we install.

requirements.txt (what ansible-builder puts in an execution environment, and what the pg_backup role installs
on a host) holds compatible ranges, the same as pyproject.toml's dependencies; constraints.txt pins each
package that requirements.txt or requirements-dev.txt brings in, at a version inside those ranges, so hosts,
CI, .venv and Molecule's wheelhouse install the tested set.
"""

import re
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the controller's Python is 3.12 or newer
    tomllib = None

ROOT = Path(__file__).resolve().parents[2]


def requirement_lines(path):
    """The requirements of a pip requirements file (comments, blank lines and -r/-c lines left out)."""
    found = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = re.sub(r"(^|\s)#.*$", "", line).strip()
        if line and not line.startswith("-"):
            found.append(Requirement(line))
    return found


def pins():
    """constraints.txt as {canonical name: version}; each line must be an exact pin."""
    pinned = {}
    for requirement in requirement_lines(ROOT / "constraints.txt"):
        specifiers = list(requirement.specifier)
        assert len(specifiers) == 1 and specifiers[0].operator == "==", "constraints.txt: %s is not name==version" % requirement
        name = canonicalize_name(requirement.name)
        assert name not in pinned, "constraints.txt pins %s twice" % requirement.name
        pinned[name] = specifiers[0].version
    return pinned


def runtime():
    return requirement_lines(ROOT / "requirements.txt")


def test_runtime_requirements_are_ranges_with_a_floor_and_a_cap():
    # an exact pin (boto3==1.44.8) clashes with any other collection's boto3 in one execution environment
    assert runtime(), "requirements.txt lists nothing"
    for requirement in runtime():
        operators = sorted(spec.operator for spec in requirement.specifier)
        assert operators == ["<", ">="], "requirements.txt: %s should be a range >=floor,<cap" % requirement


@pytest.mark.skipif(tomllib is None, reason="tomllib needs Python 3.11")
def test_pyproject_depends_on_exactly_the_runtime_requirements():
    with (ROOT / "pyproject.toml").open("rb") as handle:
        dependencies = tomllib.load(handle)["project"]["dependencies"]
    declared = sorted(str(Requirement(line)) for line in dependencies)
    ranges = sorted(str(requirement) for requirement in runtime())
    assert declared == ranges, "pyproject.toml's dependencies %s are not requirements.txt's %s" % (declared, ranges)


def test_each_runtime_requirement_is_pinned_inside_its_range():
    pinned = pins()
    for requirement in runtime():
        version = pinned.get(canonicalize_name(requirement.name))
        assert version, "constraints.txt has no pin for %s: hosts would get any version in the range" % requirement.name
        assert requirement.specifier.contains(version, prereleases=True), (
            "constraints.txt pins %s==%s, outside requirements.txt's %s" % (requirement.name, version, requirement.specifier))


def test_each_dev_requirement_is_pinned_at_its_version():
    pinned = pins()
    for requirement in requirement_lines(ROOT / "requirements-dev.txt"):
        version = pinned.get(canonicalize_name(requirement.name))
        assert version, "constraints.txt has no pin for %s (requirements-dev.txt)" % requirement.name
        assert requirement.specifier.contains(version, prereleases=True), (
            "requirements-dev.txt wants %s, constraints.txt pins %s" % (requirement, version))


def dependency_closure(names):
    """Every distribution the given ones need here (markers evaluated for this Python), by canonical name."""
    seen, todo = set(), [canonicalize_name(name) for name in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for line in metadata.requires(name) or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(requirement.name))
    return seen


def test_what_a_host_installs_is_pinned_down_to_the_last_dependency():
    # the role runs pip install -r requirements.txt -c constraints.txt: a dependency without a pin
    # (s3transfer, cffi, ...) would be whatever is newest on the day a host is set up
    pinned = pins()
    closure = dependency_closure([requirement.name for requirement in runtime()] + ["setuptools"])
    unpinned = sorted(name for name in closure if name not in pinned)
    assert unpinned == [], "constraints.txt has no pin for %s" % ", ".join(unpinned)
    differs = sorted("%s %s (pinned %s)" % (name, metadata.version(name), pinned[name]) for name in closure
                     if metadata.version(name) != pinned[name])
    assert differs == [], "installed here, not as constraints.txt pins: %s" % ", ".join(differs)
