#!/usr/bin/env python
"""Isolated test hosts without Docker: one overlay of a read-only base root filesystem per host.

    testhosts.py up BASE DIR      mount DIR/root = overlay(BASE, DIR/upper), with /proc; idempotent
    testhosts.py down DIR         kill what runs inside DIR/root, unmount everything below DIR, delete DIR
    testhosts.py snapshot DEST    copy the collection (what its roles and playbooks use) to DEST

Ansible reaches a host with the community.general.chroot connection (ansible_host = DIR/root);
testinfra with testinfra.get_host(DIR/root, connection="chroot"). Hosts share this machine's
network and process table: ``down`` finds a host's processes by their root directory.
``down`` never deletes a directory while anything is still mounted below it.
"""

import os
import shutil
import signal
import subprocess
import sys
import time


def _unescape(field):
    """Decode the octal escapes (\\040 for a space, ...) of /proc/self/mountinfo."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounts_below(path):
    """Mount points at or below path, deepest first."""
    path = os.path.realpath(path)
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        for line in handle:
            target = _unescape(line.split()[4])
            if target == path or target.startswith(path + "/"):
                found.append(target)
    return sorted(set(found), key=lambda item: item.count("/"), reverse=True)


def processes_rooted_in(path):
    """PIDs of processes whose root directory is path or lies below it."""
    path = os.path.realpath(path)
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            root = os.readlink("/proc/%s/root" % entry)
        except OSError:  # gone, or a kernel thread
            continue
        if root == path or root.startswith(path + "/"):
            pids.append(int(entry))
    return pids


def _run(*command):
    done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit("testhosts: %s failed (exit %d): %s" % (" ".join(command), done.returncode, done.stderr.strip()))


def up(base, directory):
    """Mount the host's overlay root and its /proc; copy resolv.conf. Returns the root path."""
    base, directory = os.path.realpath(base), os.path.abspath(directory)
    if not os.path.isfile(os.path.join(base, "etc", "debian_version")):
        raise SystemExit("testhosts: %s is not a root filesystem: run molecule/shared/build-cache.sh" % base)
    root = os.path.join(directory, "root")
    for name in ("upper", "work", "root"):
        os.makedirs(os.path.join(directory, name), exist_ok=True)
    mounted = mounts_below(directory)
    if root not in mounted:
        _run("mount", "-t", "overlay", "overlay", "-o",
             "lowerdir=%s,upperdir=%s/upper,workdir=%s/work" % (base, directory, directory), root)
    if os.path.join(root, "proc") not in mounted:
        _run("mount", "-t", "proc", "proc", os.path.join(root, "proc"))
    shutil.copyfile("/etc/resolv.conf", os.path.join(root, "etc", "resolv.conf"))
    return root


def _kill(directory, timeout=10.0):
    root = os.path.join(os.path.abspath(directory), "root")
    for signum in (signal.SIGTERM, signal.SIGKILL):
        pids = processes_rooted_in(root)
        for pid in pids:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        while pids and time.monotonic() < deadline:
            pids = processes_rooted_in(root)
            time.sleep(0.1)
        if not pids:
            return
    raise SystemExit("testhosts: processes still running in %s: %s" % (root, processes_rooted_in(root)))


def down(directory):
    """Stop the host's processes, unmount everything below directory, then delete it."""
    directory = os.path.abspath(directory)
    if not os.path.exists(directory):
        return
    _kill(directory)
    for _attempt in range(5):  # a mount can stay busy for a moment after its last process died
        for target in mounts_below(directory):
            subprocess.run(["umount", target], capture_output=True, check=False)
        if not mounts_below(directory):
            break
        time.sleep(0.5)
    left = mounts_below(directory)
    if left:
        raise SystemExit("testhosts: refusing to delete %s: still mounted: %s" % (directory, ", ".join(left)))
    shutil.rmtree(directory)


COLLECTION_PARTS = ("galaxy.yml", "meta", "plugins", "roles", "playbooks", "pyproject.toml", "requirements.txt",
                    "constraints.txt")


def snapshot(dest):
    """Copy this checkout's collection to dest (.../ansible_collections/quankey/backup), replacing it.

    Molecule's steps then all test the same files, even while the checkout changes under them.
    """
    source = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if os.path.exists(dest):
        shutil.rmtree(dest)
    os.makedirs(dest)
    for part in COLLECTION_PARTS:
        path = os.path.join(source, part)
        if os.path.isdir(path):
            shutil.copytree(path, os.path.join(dest, part), ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, os.path.join(dest, part))
    return dest


def main(argv):
    if len(argv) == 3 and argv[0] == "up":
        print(up(argv[1], argv[2]))
    elif len(argv) == 2 and argv[0] == "down":
        down(argv[1])
    elif len(argv) == 2 and argv[0] == "snapshot":
        print(snapshot(argv[1]))
    else:
        raise SystemExit(__doc__)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
