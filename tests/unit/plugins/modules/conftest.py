# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run a module's main() as Ansible would and read back the JSON it prints."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json

import pytest

from ansible.module_utils import _internal
from ansible.module_utils._internal import _traceback
from ansible.module_utils.testing import patch_module_args

from ansible_collections.quankey.backup.plugins.module_utils import config

# Variables a module could fall back to: cleared so the developer's environment cannot leak into a test.
FALLBACK_VARIABLES = config.READ_VARIABLES + (config.ENV_FILE_VARIABLE,)

KEY = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="  # base64 of 32 bytes, a test key


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch, tmp_path):
    """No setting from the environment, and no default env file (a host's /etc/quankey/backup.env stays out)."""
    for name in FALLBACK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(config, "DEFAULT_ENV_FILE", str(tmp_path / "no-default.env"))


@pytest.fixture
def run_module(capsys, monkeypatch):
    """run_module(module, args, check_mode=False) -> the result dict the module printed."""
    def run(module, args, check_mode=False):
        args = dict(args)
        if check_mode:
            args["_ansible_check_mode"] = True
        # a module runs in a process of its own: not the controller, whatever another test imported (a filter
        # plugin's test loads controller code, and module warnings and tracebacks would go to its Display)
        monkeypatch.setattr(_internal, "is_controller", False)
        monkeypatch.setattr(_traceback, "_is_traceback_enabled", _traceback._is_module_traceback_enabled)
        # ansible-core caches the traceback setting (_ansible_tracebacks_for) per process: read it afresh
        monkeypatch.setattr(_traceback, "_module_tracebacks_enabled_events", None, raising=False)
        with patch_module_args(args):
            with pytest.raises(SystemExit):
                module.main()
        out = capsys.readouterr().out
        return json.loads(out)
    return run


class Recorder:
    """Stands in for an engine function: records its calls and returns (or raises) what it is told."""

    def __init__(self, result=None, error=None):
        self.result = result
        self.error = error
        self.calls = []

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        if self.error is not None:
            raise self.error
        return self.result

    @property
    def settings(self):
        """The Settings the module passed (first positional argument of the only call)."""
        assert len(self.calls) == 1
        return self.calls[0][0][0]

    @property
    def kwargs(self):
        assert len(self.calls) == 1
        return self.calls[0][1]


@pytest.fixture
def recorder():
    """The Recorder class, for patching engine functions."""
    return Recorder
