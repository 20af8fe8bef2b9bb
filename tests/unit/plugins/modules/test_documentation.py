# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What validate-modules cannot see: fallback variables in the docs, EXAMPLES that use real options,
and one set of shared options so module_defaults for group/quankey.backup.all works with every module."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import re

import pytest
import yaml

from ansible_collections.quankey.backup.plugins.module_utils import ansible_common
from ansible_collections.quankey.backup.plugins.modules import backup_adopt, backup_health, backup_info, backup_rekey
from ansible_collections.quankey.backup.plugins.modules import pg_encrypted_backup, s3_backup_restore

MODULES = {"pg_encrypted_backup": pg_encrypted_backup, "s3_backup_restore": s3_backup_restore,
           "backup_health": backup_health, "backup_info": backup_info, "backup_rekey": backup_rekey,
           "backup_adopt": backup_adopt}


def _accepted(module):
    names = set()
    for name, spec in module.argument_spec().items():
        names.add(name)
        names.update(spec.get("aliases", []))
    return names


def _tasks(tasks, defaults=None):
    """(task, module_defaults in force) for every task, blocks included."""
    for task in tasks:
        merged = dict(defaults or {})
        merged.update(task.get("module_defaults", {}))
        for section in ("block", "rescue", "always"):
            if section in task:
                yield from _tasks(task[section], merged)
        if "block" not in task:
            yield task, merged


@pytest.mark.parametrize("name", sorted(MODULES))
def test_own_options_name_their_fallback_variables(name):
    module = MODULES[name]
    options = yaml.safe_load(module.DOCUMENTATION)["options"]
    spec = module.argument_spec()
    for option, doc in options.items():
        if "description" not in doc:
            continue  # only overrides a fragment's option (e.g. required); the fragment's test covers it
        text = " ".join(doc["description"])
        variables = list(spec[option]["fallback"][1]) if "fallback" in spec[option] else []
        assert re.findall(r"E\(([A-Z0-9_]+)\)", text) == variables, option


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_module_accepts_the_shared_options(name):
    assert set(ansible_common.common_argument_spec()) <= set(MODULES[name].argument_spec())


@pytest.mark.parametrize("name", sorted(MODULES))
def test_examples_use_only_options_the_modules_accept(name):
    examples = yaml.safe_load(MODULES[name].EXAMPLES)
    used = 0
    for task, defaults in _tasks(examples):
        for key, args in task.items():
            if key.startswith("quankey.backup."):
                used += 1
                module = MODULES[key.split(".")[-1]]
                unknown = set(args or {}) - _accepted(module)
                assert not unknown, "%s in task %r" % (sorted(unknown), task.get("name"))
        for group_option in defaults.get("group/quankey.backup.all", {}):
            for module in MODULES.values():
                assert group_option in _accepted(module), group_option
    assert used, "EXAMPLES of %s never call a module of the collection" % name


def test_every_module_is_in_the_action_group_and_tested_here():
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "..")
    with open(os.path.join(root, "meta", "runtime.yml")) as handle:
        group = yaml.safe_load(handle)["action_groups"]["all"]
    files = sorted(name[:-3] for name in os.listdir(os.path.join(root, "plugins", "modules"))
                   if name.endswith(".py") and not name.startswith("_"))
    assert sorted(group) == files == sorted(MODULES)
