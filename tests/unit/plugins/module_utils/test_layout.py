# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The engine's layers (docs/ARCHITECTURE.md) held against its imports.

A file may import files of a lower layer and files of its own package; nothing
imports upwards, nothing imports in a circle, and no project import hides inside
a function (the way circles used to be dodged).  Only ansible_common may import
Ansible: the rest runs on managed hosts and in cron without it.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ast
import os

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", "..",
                                    "plugins", "module_utils"))
PREFIX = "ansible_collections.quankey.backup.plugins.module_utils."

# Lowest first.  A name is a file (without .py) or a package ("formats/").
LAYERS = [
    {"errors", "units"},
    {"secretfiles", "progress"},
    {"formats/"},
    {"config", "catalog/"},
    {"adapters/", "keys"},
    {"workflows/"},
    {"cli", "ansible_common"},
]


def _files():
    found = []
    for folder, _dirs, names in os.walk(ROOT):
        for name in names:
            if name.endswith(".py") and name != "__init__.py":
                path = os.path.join(folder, name)
                found.append(os.path.relpath(path, ROOT)[:-3].replace(os.sep, "/"))
    return sorted(found)


def _unit(module):
    """The layer entry a module belongs to: 'keys' or 'formats/'."""
    return module.split("/")[0] + "/" if "/" in module else module


def _layer(module):
    unit = _unit(module)
    for number, members in enumerate(LAYERS):
        if unit in members:
            return number
    raise AssertionError("%s belongs to no layer: add it to LAYERS and docs/ARCHITECTURE.md" % module)


def _resolve(module, node):
    """Project modules that one import statement names, as 'folder/file' paths."""
    names = [alias.name for alias in node.names]
    if node.level:
        base = module.split("/")[:-1]
        if node.level > 1:
            base = base[:len(base) - (node.level - 1)]
        stem = base + (node.module.split(".") if node.module else [])
    elif node.module and (node.module + ".").startswith(PREFIX):
        stem = node.module[len(PREFIX):].split(".") if node.module + "." != PREFIX else []
    else:
        return []
    targets = []
    for name in names:
        candidate = "/".join(stem + [name])
        if os.path.isfile(os.path.join(ROOT, candidate + ".py")):
            targets.append(candidate)
        else:
            targets.append("/".join(stem))
    return [target for target in targets if os.path.isfile(os.path.join(ROOT, target + ".py"))]


def _imports(module):
    with open(os.path.join(ROOT, module + ".py")) as handle:
        tree = ast.parse(handle.read())
    top, nested, ansible = [], [], []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            targets = _resolve(module, node)
            if node.col_offset == 0:
                top.extend(targets)
            else:
                nested.extend(targets)
            if (node.module or "").split(".")[0] == "ansible" and node.col_offset == 0:
                ansible.append(node.module)
        elif isinstance(node, ast.Import):
            ansible.extend(alias.name for alias in node.names
                           if alias.name.split(".")[0] == "ansible")
    return top, nested, ansible


MODULES = _files()


def test_the_layout_is_found_and_its_imports_are_read():
    assert {"errors", "keys", "cli", "formats/crypto", "workflows/restore", "adapters/s3"} <= set(MODULES)
    restore = set(_imports("workflows/restore")[0])
    assert {"keys", "config", "errors", "formats/modes", "catalog/trust", "workflows/inventory"} <= restore
    assert "catalog/layout" in _imports("catalog/dbnames")[0]


@pytest.mark.parametrize("module", MODULES)
def test_each_file_imports_only_lower_layers_or_its_own_package(module):
    top, _nested, _ansible = _imports(module)
    for target in top:
        same_package = "/" in module and _unit(module) == _unit(target)
        assert same_package or _layer(target) < _layer(module), (
            "%s (layer %d) imports %s (layer %d)" % (module, _layer(module), target, _layer(target)))


@pytest.mark.parametrize("module", MODULES)
def test_no_project_import_hides_inside_a_function(module):
    _top, nested, _ansible = _imports(module)
    assert nested == []


@pytest.mark.parametrize("module", MODULES)
def test_only_ansible_common_imports_ansible(module):
    _top, _nested, ansible = _imports(module)
    assert ansible == [] or module == "ansible_common"


def test_no_files_import_each_other_in_a_circle():
    graph = dict((module, set(_imports(module)[0])) for module in MODULES)
    state = {}

    def visit(module, path):
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                raise AssertionError("circle: " + " -> ".join(path + [module, target]))
            if target not in state:
                visit(target, path + [module])
        state[module] = "done"

    for module in MODULES:
        if module not in state:
            visit(module, [])
    assert set(state) == set(MODULES)
