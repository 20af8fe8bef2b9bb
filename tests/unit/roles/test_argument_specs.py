# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Each role's meta/argument_specs.yml and defaults/main.yml describe the same variables, and the
roles keep the naming rules: public <role>_*, internal _<role>_*, registered __<role>_*."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os

import pytest
import yaml

ROLES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "roles")
ROLES = sorted(name for name in os.listdir(ROLES_DIR) if os.path.isdir(os.path.join(ROLES_DIR, name)))


def _load(role, *parts):
    path = os.path.join(ROLES_DIR, role, *parts)
    if not os.path.exists(path):
        return None
    with open(path) as handle:
        return yaml.safe_load(handle)


def _options(role):
    return _load(role, "meta", "argument_specs.yml")["argument_specs"]["main"]["options"]


def _tasks(role):
    tasks_dir = os.path.join(ROLES_DIR, role, "tasks")
    for name in sorted(os.listdir(tasks_dir)):
        for task in _load(role, "tasks", name) or []:
            yield name, task
            for inner in task.get("block", []) + task.get("rescue", []) + task.get("always", []):
                yield name, inner


def test_the_collection_has_the_four_roles():
    assert ROLES == ["backup_monitor", "pg_backup", "restore_drill", "restore_runbook"]


@pytest.mark.parametrize("role", ROLES)
def test_argument_specs_and_defaults_list_the_same_variables(role):
    options, defaults = _options(role), _load(role, "defaults", "main.yml")
    assert sorted(options) == sorted(defaults), "only in argument_specs: %s; only in defaults: %s" % (
        sorted(set(options) - set(defaults)), sorted(set(defaults) - set(options)))


@pytest.mark.parametrize("role", ROLES)
def test_argument_specs_and_defaults_agree_on_every_default(role):
    options, defaults = _options(role), _load(role, "defaults", "main.yml")
    different = dict((name, (spec.get("default"), defaults.get(name))) for name, spec in options.items()
                     if spec.get("default") != defaults.get(name))
    assert different == {}


@pytest.mark.parametrize("role", ROLES)
def test_every_variable_is_typed_and_documented(role):
    for name, spec in _options(role).items():
        assert spec.get("type"), "%s has no type" % name
        assert spec.get("description"), "%s has no description" % name
        if spec["type"] == "list":
            assert spec.get("elements"), "%s: a list needs elements" % name
        if "choices" in spec:
            assert spec["default"] in spec["choices"], "%s: default not among the choices" % name


@pytest.mark.parametrize("role", ROLES)
def test_variables_are_prefixed_with_the_role_name(role):
    assert all(name.startswith(role + "_") for name in _options(role))
    internal = _load(role, "vars", "main.yml") or {}
    assert all(name.startswith("_%s_" % role) for name in internal), sorted(internal)


@pytest.mark.parametrize("role", ROLES)
def test_registered_results_and_facts_use_the_internal_prefixes(role):
    for filename, task in _tasks(role):
        if "register" in task:
            assert task["register"].startswith("__%s_" % role), "%s: register %s" % (filename, task["register"])
        facts = task.get("ansible.builtin.set_fact") or {}
        for name in facts:
            assert name.startswith("_%s_" % role), "%s: set_fact %s" % (filename, name)


@pytest.mark.parametrize("role", ROLES)
def test_secrets_are_no_log(role):
    secret_words = ("password", "secret", "encryption_key")
    for name, spec in _options(role).items():
        if any(word in name for word in secret_words):
            assert spec.get("no_log") is True, "%s must be no_log" % name


@pytest.mark.parametrize("role", ROLES)
def test_main_reads_as_a_table_of_contents(role):
    main = _load(role, "tasks", "main.yml")
    assert main[0]["ansible.builtin.import_tasks"] == "preflight.yml"
    assert all(set(task) == {"name", "ansible.builtin.import_tasks"} for task in main)
