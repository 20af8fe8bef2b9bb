#!/usr/bin/env python
"""Fleet timing: `playbooks/setup_backups.yml` on N Molecule-style chroot hosts, first and second run.

Reuses the Molecule scenario machinery of molecule/shared (base image, overlay hosts, the
PostgreSQL and IAM-enforcing S3 services) with a scenario of N plain database hosts written to
a scratch project directory that links to this checkout. Create and destroy are not timed;
converge (the playbook users run, unchanged) is timed twice: the first run sets every host up,
the second should change nothing.

    python bench/fleet.py [--hosts 8]       # prints JSON; as root (chroot, mounts)
"""

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
UNLINKED = (".git", "molecule")  # everything else of the checkout is linked into the scratch project
SCENARIO = "bench-fleet"
# a PLAY RECAP line, as Molecule shows it (boxed with "│", maybe colored)
RECAP = re.compile(r"^[\s\u2502]*(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def scenario_yaml(hosts):
    lines = ["---", "# written by bench/fleet.py: %d plain database hosts" % hosts, "platforms:"]
    for number in range(1, hosts + 1):
        lines += ["  - name: db%d" % number, "    groups: [databases]"]
    return "\n".join(lines) + "\n"


def landed():
    """Whether the playbook and a Molecule scenario are committed in this checkout."""
    def committed(pattern):
        done = subprocess.run(["git", "-C", str(ROOT), "ls-files", "--", pattern], capture_output=True, text=True,
                              check=False)
        return done.returncode == 0 and bool(done.stdout.strip())
    return committed("playbooks/setup_backups.yml") and committed("molecule/shared/create.yml")


def run_fleet(hosts=8, log=print):
    """Create N hosts, time two converges, destroy; returns a dict of timings and change counts."""
    project = Path(tempfile.mkdtemp(prefix="quankey-bench-fleet-", dir="/tmp"))
    (project / "molecule" / SCENARIO).mkdir(parents=True)
    os.symlink(ROOT / "molecule" / "shared", project / "molecule" / "shared")
    for entry in ROOT.iterdir():
        if entry.name not in UNLINKED:
            os.symlink(entry, project / entry.name)
    (project / "molecule" / SCENARIO / "molecule.yml").write_text(scenario_yaml(hosts), encoding="utf-8")
    env = dict(os.environ, PATH="%s:%s" % (ROOT / ".venv" / "bin", os.environ.get("PATH", "")),
               ANSIBLE_HOME=str(ROOT / "build" / "molecule" / "ansible-home"))
    molecule = [str(ROOT / ".venv" / "bin" / "molecule"), "-c", "molecule/shared/base.yml"]

    def step(action):
        started = time.monotonic()
        done = subprocess.run(molecule + [action, "-s", SCENARIO], cwd=project, env=env, capture_output=True,
                              text=True, check=False)
        seconds = time.monotonic() - started
        if done.returncode != 0:
            output = (done.stdout + done.stderr)[-3000:]
            raise RuntimeError("molecule %s failed (%d): %s" % (action, done.returncode, output))
        recap = RECAP.findall(ANSI.sub("", done.stdout + done.stderr))
        log("fleet: molecule %s: %.1fs" % (action, seconds))
        return seconds, recap

    result = {"hosts": hosts}
    try:
        result["create_s"] = step("create")[0]
        result["first_run_s"], recap = step("converge")
        result["first_run_changed"] = {host: int(changed) for host, _ok, changed, _u, _f in recap}
        result["second_run_s"], recap = step("converge")
        result["second_run_changed"] = {host: int(changed) for host, _ok, changed, _u, _f in recap}
    finally:
        try:
            step("destroy")
        finally:
            shutil.rmtree(project, ignore_errors=True)
            # destroy.yml empties the hosts' directory (named after the project path); remove it when empty
            hosts_dir = Path("/tmp/quankey-molecule-%s" % hashlib.sha1(str(project).encode()).hexdigest()[:8])
            for directory in (hosts_dir / SCENARIO, hosts_dir):
                try:
                    directory.rmdir()
                except OSError:
                    pass
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--hosts", type=int, default=8)
    args = parser.parse_args(argv)
    print(json.dumps(run_fleet(args.hosts, log=lambda message: print(message, file=sys.stderr)), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
