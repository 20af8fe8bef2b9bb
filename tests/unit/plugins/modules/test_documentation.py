# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What validate-modules cannot see: every documented option against the settings table (config.TABLE),
EXAMPLES that use real options, and one set of shared options so module_defaults for group/quankey.backup.all
works with every module."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import importlib
import os
import re

import pytest
import yaml

from ansible_collections.quankey.backup.plugins.module_utils import ansible_common, config
from ansible_collections.quankey.backup.plugins.modules import backup_adopt, backup_drill, backup_health, backup_info
from ansible_collections.quankey.backup.plugins.modules import backup_rekey, backup_replicate
from ansible_collections.quankey.backup.plugins.modules import pg_encrypted_backup, s3_backup_restore

MODULES = {"pg_encrypted_backup": pg_encrypted_backup, "s3_backup_restore": s3_backup_restore,
           "backup_health": backup_health, "backup_info": backup_info, "backup_rekey": backup_rekey,
           "backup_adopt": backup_adopt, "backup_drill": backup_drill, "backup_replicate": backup_replicate}


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


SECRET_SENTENCE = "This value is a secret and is never logged."
# Options that are no setting but fall back to a variable all the same.
OTHER_FALLBACKS = {"env_file": [config.ENV_FILE_VARIABLE]}
OPTIONS = dict((setting.option, setting) for setting in config.TABLE if setting.option)


def _documented_options(module):
    """The module's options as ansible-doc shows them: its doc fragments' merged with its own."""
    doc = yaml.safe_load(module.DOCUMENTATION)
    options = {}
    for fragment in doc.get("extends_documentation_fragment", []):
        if fragment.startswith("quankey.backup."):
            loaded = importlib.import_module("ansible_collections.quankey.backup.plugins.doc_fragments."
                                             + fragment.split(".")[-1])
            options.update(yaml.safe_load(loaded.ModuleDocFragment.DOCUMENTATION)["options"])
    for name, own in doc["options"].items():
        options[name] = dict(options.get(name, {}), **own)
    return options


def _text(doc):
    return " ".join(doc["description"]) if isinstance(doc["description"], list) else doc["description"]


def _value(default):
    return str(default).lower() if isinstance(default, bool) else str(default)


def _cases():
    for name in sorted(MODULES):
        for option in sorted(_documented_options(MODULES[name])):
            yield name, option


@pytest.mark.parametrize("name, option", list(_cases()))
def test_each_documented_option_agrees_with_the_settings_table(name, option):
    doc = _documented_options(MODULES[name])[option]
    spec = MODULES[name].argument_spec()[option]
    text = _text(doc)
    setting = OPTIONS.get(option)
    mentioned = re.findall(r"E\(([A-Z0-9_]+)\)", text)
    if setting is None:
        assert mentioned == OTHER_FALLBACKS.get(option, []), "E() of %s, which is no setting" % option
        assert SECRET_SENTENCE not in text and not spec.get("no_log")
        return
    expected = ansible_common.option_spec(setting)
    assert dict((key, value) for key, value in spec.items() if key != "description") == expected, \
        "%s: the argument spec is the table's, without default or fallback" % option
    assert doc.get("type", "str") == expected["type"]
    assert doc.get("elements") == expected.get("elements")
    assert doc.get("choices") == expected.get("choices")
    assert doc.get("aliases", []) == expected.get("aliases", [])
    assert "default" not in doc and not doc.get("required"), \
        "%s: an env file can set it, so the docs state its default in words and it is not required" % option
    assert (SECRET_SENTENCE in text) is setting.secret, "%s: no_log and the docs' secret sentence" % option
    assert mentioned == list(setting.variables), "%s falls back to %s" % (option, ", ".join(setting.variables))
    if setting.default not in (None, ""):
        assert "Defaults to V(%s)" % _value(setting.default) in text, "%s: the engine's default" % option


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_setting_option_of_a_module_is_documented(name):
    documented = _documented_options(MODULES[name])
    assert set(documented) == set(MODULES[name].argument_spec())
    for option, setting in OPTIONS.items():
        if setting.group in (config.POSTGRES, config.S3, config.ENCRYPTION):
            assert option in documented, option


def test_the_option_groups_hold_the_tables_settings():
    for builder, group in ((ansible_common.postgres_argument_spec, config.POSTGRES),
                           (ansible_common.s3_argument_spec, config.S3),
                           (ansible_common.encryption_argument_spec, config.ENCRYPTION)):
        options = set(setting.option for setting in config.TABLE if setting.group == group)
        assert options <= set(builder()), group
        assert set(builder()) - options <= {"login_unix_socket"}, group


def test_no_option_is_required_that_an_env_file_can_set():
    for name, module in MODULES.items():
        for option, spec in module.argument_spec().items():
            if option in OPTIONS:
                assert "default" not in spec and "fallback" not in spec and not spec.get("required"), (name, option)


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
