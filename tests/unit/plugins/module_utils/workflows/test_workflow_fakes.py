# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The fakes cannot drift from the adapters they stand for: same public methods, same signatures."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import inspect

import pytest

from ansible_collections.quankey.backup.plugins.module_utils.adapters import postgres, s3
from ansible_collections.quankey.backup.tests.unit.plugins.module_utils.workflows import fakes


def _methods(cls, helpers=()):
    """{name: (kind, signature)} of a class's public methods (not its constructor), but the test helpers."""
    found = {}
    for name, member in inspect.getmembers(cls):
        if name.startswith("_") or name in helpers:
            continue
        raw = inspect.getattr_static(cls, name)
        if isinstance(raw, (classmethod, staticmethod)):
            found[name] = (type(raw).__name__, str(inspect.signature(member)))
        elif inspect.isfunction(member):
            found[name] = ("method", str(inspect.signature(member)))
    return found


@pytest.mark.parametrize("real, fake", [
    (s3.S3Store, fakes.MemoryStore), (s3.MultipartUpload, fakes.MemoryUpload), (postgres.PgClient, fakes.FakePg),
], ids=["S3Store", "MultipartUpload", "PgClient"])
def test_a_fake_has_the_real_adapters_methods_and_signatures(real, fake):
    assert _methods(fake, getattr(fake, "TEST_HELPERS", ())) == _methods(real)


def test_the_comparison_sees_a_drift():
    class Drifted(fakes.MemoryStore):
        def get_range(self, key, start):  # a parameter lost
            return b""

        def rename(self, old, new):  # a method the real store does not have
            return None

    found, real = _methods(Drifted, Drifted.TEST_HELPERS), _methods(s3.S3Store)
    assert found["get_range"] != real["get_range"] and "rename" in found and "rename" not in real
    assert sorted(set(_methods(postgres.PgClient))) == sorted(set(_methods(fakes.FakePg, fakes.FakePg.TEST_HELPERS)))
    assert {"list_objects", "put_bytes", "open_multipart"} <= set(real)
