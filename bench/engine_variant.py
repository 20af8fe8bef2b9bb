#!/usr/bin/env python
"""`quankey-backup` with one engine constant changed, to measure a variant beside the default in one run.

    python bench/engine_variant.py ZSTD_LEVEL -- quankey-backup arguments...

Only for the benchmark: the constant is patched in this process before the command runs.
"""

import sys

from quankey_backup import cli
from quankey_backup.formats import compression


def main():
    level = int(sys.argv[1])
    args = sys.argv[2:]
    if args[:1] == ["--"]:
        args = args[1:]
    compression.ZSTD_LEVEL = level
    sys.argv = ["quankey-backup"] + args
    return cli.main()


if __name__ == "__main__":
    sys.exit(main())
