#!/usr/bin/env python
# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Render docs/images/monitoring-fleet.png, the fleet view of docs/MONITORING.md, from real output.

On a throwaway test bed (tests/testbed.py: PostgreSQL and a local S3 endpoint) a small fleet runs the real
``quankey-backup`` with BACKUP_METRICS_DIR (each run's record) and the backup_monitor role's real check script (its
health textfile): db1 backs up shop and crm and prunes shop; db2 backs up billing, then a run fails (the password
changed); db3's ledger never had a good run. The table is drawn from the textfiles node_exporter would serve, the
same numbers the Grafana dashboard's fleet table queries.

    .venv/bin/python scripts/render_fleet_view.py [--output docs/images/monitoring-fleet.png]
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import sampledb  # noqa: E402  pylint: disable=wrong-import-position
from testbed import Testbed, write_env_file  # noqa: E402  pylint: disable=wrong-import-position

CLI = str(Path(sys.executable).parent / "quankey-backup")
MONITOR = ROOT / "roles" / "backup_monitor" / "files" / "quankey-backup-monitor.py"
SAMPLE = re.compile(r'^(\w+)\{([^}]*)\} (\S+)$')
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
FLEET = (("db1", "shop"), ("db1", "crm"), ("db2", "billing"), ("db3", "ledger"))


def run(env_file, *args, expect=None):
    """quankey-backup with only the env file's settings."""
    clean = dict((key, value) for key, value in os.environ.items() if not key.startswith(("PG", "AWS_", "DB_", "S3_",
                                                                                          "BACKUP_")))
    done = subprocess.run([CLI, "--env-file", env_file, "-q"] + list(args), env=clean, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, check=False)
    if expect is not None and done.returncode != expect:
        raise SystemExit("quankey-backup %s: exit %d, wanted %d: %s"
                         % (" ".join(args), done.returncode, expect, done.stderr))
    return done


def samples(directory):
    """[(name, labels dict, value)] of every .prom file of ``directory``."""
    found = []
    for path in sorted(Path(directory).glob("*.prom")):
        for line in path.read_text().splitlines():
            match = SAMPLE.match(line)
            if match:
                found.append((match.group(1), dict(LABEL.findall(match.group(2))), float(match.group(3))))
    return found


def fleet_rows(found, now):
    """One row per host and database: the dashboard's fleet table."""
    def value(name, host, database, **labels):
        for metric, metric_labels, number in found:
            if metric == name and metric_labels.get("host") == host and metric_labels.get("database") == database \
                    and all(metric_labels.get(key) == text for key, text in labels.items()):
                return number
        return None

    def ago(stamp):
        if stamp is None:
            return "-"
        seconds = max(0, now - stamp)
        return "%d min" % (seconds // 60) if seconds < 3600 else "%.1f h" % (seconds / 3600)

    rows = []
    for host, database in FLEET:
        status = {0: "ok", 1: "warning", 2: "critical"}.get(value("quankey_backup_status", host, database), "-")
        size = value("quankey_backup_last_size_bytes", host, database)
        exit_code = value("quankey_backup_run_last_exit_code", host, database, command="backup")
        duration = value("quankey_backup_run_last_duration_seconds", host, database, command="backup")
        dump = value("quankey_backup_run_last_stage_duration_seconds", host, database, command="backup",
                     stage="dump_upload")
        pruned = value("quankey_backup_run_last_exit_code", host, database, command="prune")
        findings = sorted(set(labels["rule"] for metric, labels, _number in found if metric == "quankey_backup_finding"
                              and labels.get("host") == host and labels.get("database") == database))
        rows.append([host, database, status,
                     ago(value("quankey_backup_last_success_timestamp_seconds", host, database)),
                     "%.1f KiB" % (size / 1024) if size is not None else "-",
                     "-" if exit_code is None else ("ok" if exit_code == 0 else "FAILED (exit %d)" % exit_code),
                     "-" if duration is None else "%.2f s" % duration,
                     "-" if dump is None else "%.2f s" % dump,
                     "-" if pruned is None else ("ok" if pruned == 0 else "exit %d" % pruned),
                     ", ".join(findings) or "-"])
    return rows


def draw(rows, output, when):
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
    header = ["host", "database", "health", "newest backup", "size", "last backup run", "its duration",
              "dump+upload (last done)", "last prune", "findings"]
    colors = {"ok": "#c8e6c9", "warning": "#ffe0b2", "critical": "#ffcdd2"}
    figure, axes = plt.subplots(figsize=(11, 2.3))
    axes.axis("off")
    table = axes.table(cellText=rows, colLabels=header, loc="center", cellLoc="left")
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    table.scale(1, 1.6)
    for (row, column), cell in table.get_celld().items():
        if row == 0:
            cell.set_facecolor("#37474f")
            cell.get_text().set_color("white")
            continue
        values = rows[row - 1]
        if column == 2:
            cell.set_facecolor(colors.get(values[2], "white"))
        if column == 5 and values[5].startswith("FAILED"):
            cell.set_facecolor(colors["critical"])
    table.auto_set_column_width(list(range(len(header))))
    axes.set_title("quankey.backup fleet view: node_exporter textfiles of a test-bed fleet, %s" % when, fontsize=10)
    figure.tight_layout()
    figure.savefig(output, dpi=110)
    plt.close(figure)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--output", default=str(ROOT / "docs" / "images" / "monitoring-fleet.png"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="quankey-fleet-") as workdir, Testbed(bucket="quankey-fleet-view") as bed:
        textfile = Path(workdir) / "textfile"
        textfile.mkdir()
        env_files = {}
        for host, database in FLEET:
            bed.pg.create_database(database)
            sampledb.fill(bed.pg, database)
            env = bed.backup_env(database)
            env.update(BACKUP_HOST_ID=host, BACKUP_METRICS_DIR=str(textfile), S3_PREFIX="fleet")
            env_files[(host, database)] = path = os.path.join(workdir, "%s-%s.env" % (host, database))
            write_env_file(path, env)
            if database == "ledger":  # its password was never right
                write_env_file(path, dict(env, PGPASSWORD="wrong"))
                run(path, "backup", expect=4)
                continue
            run(path, "backup", expect=0)
        run(env_files[("db1", "shop")], "prune", expect=0)
        billing = bed.backup_env("billing")
        billing.update(BACKUP_HOST_ID="db2", BACKUP_METRICS_DIR=str(textfile), S3_PREFIX="fleet", PGPASSWORD="changed")
        write_env_file(env_files[("db2", "billing")], billing)
        run(env_files[("db2", "billing")], "backup", expect=4)  # the night after: the password changed
        for host in ("db1", "db2", "db3"):  # the backup_monitor role's check, one per host
            config = Path(workdir) / ("monitor-%s.json" % host)
            databases = [database for each, database in FLEET if each == host]
            config.write_text(json.dumps({
                "host": host, "command": CLI, "env_file": env_files[(host, databases[0])], "databases": databases,
                "max_age_hours": 36, "min_size_bytes": 0, "status_file": str(Path(workdir) / ("health-%s.json" % host)),
                "textfile": str(textfile / ("quankey_backup_%s.prom" % host)), "runs_dir": str(textfile)}))
            subprocess.run([sys.executable, str(MONITOR), "--config", str(config)], stdout=subprocess.DEVNULL,
                           check=False)
        now = time.time()
        rows = fleet_rows(samples(textfile), now)
    for row in rows:
        print("  ".join(row))
    draw(rows, args.output, time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(now)))
    print("wrote %s" % args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
