# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the pg_backup role needs to know to take over a host the seed's scripts set up (backup-cron-setup.sh),
in one look that changes nothing (run by ansible.builtin.script with the host's Python). Prints one JSON object,
which holds the seed's settings, secrets included: the task that runs it is no_log.

    seed_facts.py --command-link PATH --command PATH --env-file PATH [--own-cron-file NAME ...]

- ``script``: what is at the command path: ``ours`` (a link to the engine's command), ``seed`` (the seed's
  script, known by its content: a shell script that runs ``openssl enc`` or pipes ``pg_dump`` into ``gzip``,
  or a link to one), ``other`` or ``missing``; ``script_aside``: a free name beside it to move the seed's script
  to (``<path>.seed-<YYYYmmdd>``); ``scripts_aside``: the seed's scripts already moved there.
- ``env``: the env file is ``ours`` (written by the role), ``foreign`` or ``missing``; ``env_copy``: a free name
  for a copy of the seed's env file (``<env file>.seed-<YYYYmmdd>``); ``env_copies``: the copies already kept.
- ``seed_env``: the seed's settings, read as quankey-backup reads an env file: from the oldest copy, else from a
  foreign env file on a seed host; ``seed_env_source``: which file; ``unreadable_lines``: line numbers skipped.
- ``cron``: the cron lines that run the seed's script (``file``, ``line``), in users' crontabs, /etc/crontab and
  /etc/cron.d (but the role's own files); commented lines are not looked at.
- ``seed``: whether this is a seed host (its script at or beside the command path, a kept env file, or its cron line).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import argparse
import glob
import json
import os
import re
import time

# what the env file template writes first in the file it owns
OURS_MARKER = re.compile(r"^# quankey-backup settings of ", re.MULTILINE)
SHELL_SCRIPT = re.compile(r"\A#!\s*\S*(?:/|\s)(?:ba|da|k|z)?sh\b")
SEED_PIPELINE = (re.compile(r"\bopenssl\s+enc\b"), re.compile(r"\bpg_dump\b[^|]*\|\s*gzip\b"))
# the engine's subcommands: a cron line that runs the command with one of them (or an option) is not the seed's
ENGINE_WORDS = ("backup", "list", "restore", "verify", "health", "prune", "rekey", "keygen", "adopt", "restore-role")
ENV_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$")
CRON_ENV_LINE = re.compile(r"^\s*[A-Za-z_][A-Za-z0-9_]*\s*=")
USER_CRONTABS = "/var/spool/cron/crontabs"  # Debian's: one file per user, no user field
SYSTEM_CRONTAB = "/etc/crontab"
SYSTEM_CRON_DIR = "/etc/cron.d"
SEED_SCRIPT_NAMES = ("postgres-backup.sh",)


def shell_value(raw):
    """A value as the shell reads it; the same rules as quankey-backup's env file reader (config._shell_value).

    Raises ValueError, without the value (it may be a secret).
    """
    out = []
    index, size = 0, len(raw)
    while index < size:
        char = raw[index]
        if char == "'":
            end = raw.find("'", index + 1)
            if end < 0:
                raise ValueError("an unterminated single quote")
            out.append(raw[index + 1:end])
            index = end + 1
        elif char == '"':
            index += 1
            while index < size and raw[index] != '"':
                if raw[index] == "\\" and index + 1 < size and raw[index + 1] in '"\\$`':
                    index += 1
                out.append(raw[index])
                index += 1
            if index >= size:
                raise ValueError("an unterminated double quote")
            index += 1
        elif char == "\\" and index + 1 < size:
            out.append(raw[index + 1])
            index += 2
        elif char.isspace():
            rest = raw[index:].strip()
            if rest and not rest.startswith("#"):
                raise ValueError("an unquoted space")
            break
        else:
            out.append(char)
            index += 1
    return "".join(out)


def parse_env(text):
    """({name: value}, [line numbers that are not KEY=VALUE]) of an env file, as quankey-backup reads it."""
    values, skipped = {}, []
    if text.startswith(u"\ufeff"):
        text = text[1:]
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = ENV_LINE.match(line)
        try:
            if not match:
                raise ValueError("not KEY=VALUE")
            values[match.group(1)] = shell_value(match.group(2))
        except ValueError:
            skipped.append(number)
    return values, skipped


def read_text(path, limit=None):
    try:
        with open(path, "rb") as handle:
            data = handle.read() if limit is None else handle.read(limit)
    except (IOError, OSError):
        return None
    return data.decode("utf-8", "replace")


def is_seed_script(path):
    """Whether ``path`` (followed if a link) is the seed's backup script: a shell script of its pipeline."""
    text = read_text(path, 262144)
    if not text or not SHELL_SCRIPT.match(text):
        return False
    return any(pattern.search(text) for pattern in SEED_PIPELINE)


def script_kind(path, command):
    if not os.path.lexists(path):
        return "missing"
    if os.path.islink(path) and os.path.realpath(path) == os.path.realpath(command):
        return "ours"
    if os.path.isfile(path) and is_seed_script(path):
        return "seed"
    return "other"


def free_name(base):
    """``base`` if nothing is there, else ``base-2``, ``base-3``, ..."""
    name, number = base, 1
    while os.path.lexists(name):
        number += 1
        name = "%s-%d" % (base, number)
    return name


def runs_seed_script(command, link, seed_paths):
    """Whether a cron command runs the seed's script: by its name or path, or the command path with no subcommand."""
    for path in seed_paths:
        if re.search(r"(?:^|[\s;&|(`'\"])%s(?=$|[\s;&|)<>`'\"])" % re.escape(path), command):
            return True
    for name in SEED_SCRIPT_NAMES:
        if re.search(r"(?:^|[\s/;&|(`'\"])%s(?=$|[\s;&|)<>`'\"])" % re.escape(name), command):
            return True
    for match in re.finditer(r"(?:^|[\s;&|(`'\"])%s(?=$|[\s;&|)<>`'\"])" % re.escape(link), command):
        following = command[match.end():].split()
        word = following[0] if following else ""
        if not (word in ENGINE_WORDS or word.startswith("-")):
            return True
    return False


def cron_command(line, system):
    """The command of a crontab line; None for comments, variables, blank and malformed lines."""
    stripped = line.strip()
    if not stripped or stripped.startswith("#") or CRON_ENV_LINE.match(stripped):
        return None
    schedule_fields = 1 if stripped.startswith("@") else 5
    if system:  # /etc/crontab and /etc/cron.d: the user comes after the schedule
        schedule_fields += 1
    fields = stripped.split(None, schedule_fields)
    return fields[-1] if len(fields) == schedule_fields + 1 else None


def seed_cron_lines(link, seed_paths, own_cron_files):
    files = [(path, False) for path in sorted(glob.glob(os.path.join(USER_CRONTABS, "*")))]
    files.append((SYSTEM_CRONTAB, True))
    files += [(path, True) for path in sorted(glob.glob(os.path.join(SYSTEM_CRON_DIR, "*")))
              if os.path.basename(path) not in own_cron_files]
    found = []
    for path, system in files:
        text = read_text(path)
        if text is None:
            continue
        for line in text.splitlines():
            command = cron_command(line, system)
            if command and runs_seed_script(command, link, seed_paths):
                found.append({"file": path, "line": line})
    return found


def look(command_link, command, env_file, own_cron_files=(), today=None):
    """Everything the role needs to know (see the module's docstring), as a JSON-ready dict."""
    today = today or time.strftime("%Y%m%d", time.gmtime())
    kind = script_kind(command_link, command)
    scripts_aside = sorted(path for path in glob.glob(glob.escape(command_link) + ".seed-*") if os.path.isfile(path))
    seed_paths = list(scripts_aside)
    if kind == "seed":
        seed_paths += sorted({command_link, os.path.realpath(command_link)})
    cron = seed_cron_lines(command_link, seed_paths, set(own_cron_files))

    env_text = read_text(env_file)
    env = "missing" if env_text is None else ("ours" if OURS_MARKER.search(env_text) else "foreign")
    env_copies = sorted(path for path in glob.glob(glob.escape(env_file) + ".seed-*") if os.path.isfile(path))
    seed = bool(kind == "seed" or scripts_aside or env_copies or cron)

    source, seed_env, unreadable = "", {}, []
    if env_copies:
        source = env_copies[0]  # the first one kept: <env file>.seed-<YYYYmmdd> sorts by date
    elif seed and env == "foreign":
        source = env_file
    if source:
        seed_env, unreadable = parse_env(read_text(source) or "")
    return {
        "seed": seed,
        "script": kind,
        "script_path": command_link,
        "script_aside": free_name("%s.seed-%s" % (command_link, today)),
        "scripts_aside": scripts_aside,
        "env": env,
        "env_file": env_file,
        "env_copy": free_name("%s.seed-%s" % (env_file, today)),
        "env_copies": env_copies,
        "seed_env": seed_env,
        "seed_env_source": source,
        "unreadable_lines": unreadable,
        "cron": cron,
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--command-link", required=True)
    parser.add_argument("--command", required=True)
    parser.add_argument("--env-file", required=True)
    parser.add_argument("--own-cron-file", action="append", default=[])
    args = parser.parse_args()
    print(json.dumps(look(args.command_link, args.command, args.env_file, args.own_cron_file), sort_keys=True))


if __name__ == "__main__":
    main()
