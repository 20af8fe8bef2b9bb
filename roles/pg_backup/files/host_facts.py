# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the pg_backup role needs to know about a host, in one look (run by ansible.builtin.script with
the Python that will own the virtualenv): that Python's version, the distribution (/etc/os-release)
and the PostgreSQL server major versions installed here. Prints one JSON object."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import glob
import json
import sys


def os_release(path="/etc/os-release"):
    """KEY=value pairs of os-release, unquoted."""
    values = {}
    try:
        with open(path) as handle:
            for line in handle:
                key, sep, value = line.strip().partition("=")
                if sep:
                    values[key] = value.strip().strip("\"'")
    except IOError:
        pass
    return values


def main():
    release = os_release()
    servers = []
    for path in glob.glob("/usr/lib/postgresql/*/bin/postgres"):
        version = path.split("/")[4]
        if version.isdigit():
            servers.append(int(version))
    print(json.dumps({
        "python": "%d.%d" % sys.version_info[:2],
        "python_ok": sys.version_info >= (3, 9),
        "distribution": release.get("ID", ""),
        "family": " ".join([release.get("ID", "")] + release.get("ID_LIKE", "").split()),
        "codename": release.get("VERSION_CODENAME", ""),
        "postgresql_servers": sorted(servers),
    }))


if __name__ == "__main__":
    main()
