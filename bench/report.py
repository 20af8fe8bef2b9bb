"""Medians, ratios and target checks from a bench run's results; the stdout table, the chart, the markdown."""

import collections
import os
import statistics

MB = 1e6
RSS_LIMIT = 200 * MB

LABELS = {
    "backup": {
        "a": "(a) pg_dump -Fc -Z0 > /dev/null",
        "b": "(b) seed: pg_dump -Fc | gzip | openssl | aws s3 cp",
        "c": "(c) quankey-backup backup",
        "c-zstd2": "(c') the same engine with zstd level 2 (proposal)",  # runs before level 2 became the default
        "c-zstd3": "(c') the same engine with zstd level 3 (the default before issue 15)",
        "d": "(d) pgBackRest full backup, S3 repo",
        "d-posix": "(d) pgBackRest full backup, posix repo",
        "upload": "upload alone (engine multipart, c's size)",
    },
    "restore": {
        "a": "(a) createdb + pg_restore from a local file",
        "a-j2": "(a) same with pg_restore -j 2",
        "b": "(b) seed: aws s3 cp, sha256sum, openssl -d | gunzip | pg_restore",
        "c": "(c) quankey-backup restore",
        "d": "(d) pgbackrest restore, S3 repo (files only)",
        "d-posix": "(d) pgbackrest restore, posix repo (files only)",
        "download": "download alone (engine GET of c's object)",
    },
}
FIELDS = ("wall_s", "client_cpu_s", "server_cpu_s", "s3_cpu_s", "other_cpu_s", "stored_bytes", "read_bytes",
          "start_recovery_s")


def _median(runs, field):
    values = [run[field] for run in runs if run.get(field) is not None]
    return statistics.median(values) if values else None


def _summarize_runs(runs):
    row = {field: _median(runs, field) for field in FIELDS}
    row["peak_rss_bytes"] = max(run["peak_rss_bytes"] for run in runs)
    row["peak_proc_rss_bytes"] = max(run["peak_proc_rss_bytes"] for run in runs)
    row["peak_proc"] = max(runs, key=lambda run: run["peak_proc_rss_bytes"])["peak_proc"]
    row["runs"] = len(runs)
    row["walls"] = [round(run["wall_s"], 2) for run in runs]
    return row


def _ratio(top, bottom):
    if top is None or bottom in (None, 0):
        return None
    return top / bottom


def summarize(results):
    """Medians per method, the ratios (c)/(a), (c)/(b), (c)/(d), and the targets' checks."""
    summary = {kind: {method: _summarize_runs(runs) for method, runs in results[kind].items()}
               for kind in ("backup", "restore", "flat")}
    backup, restore, flat = summary["backup"], summary["restore"], summary["flat"]

    def wall(table, method):
        return table.get(method, {}).get("wall_s")

    def stored(method):
        return backup.get(method, {}).get("stored_bytes")

    ratios = {}
    for other in ("a", "b", "d", "d-posix"):
        ratios["backup c/%s" % other] = _ratio(wall(backup, "c"), wall(backup, other))
        ratios["restore c/%s" % other] = _ratio(wall(restore, "c"), wall(restore, other))
    for other in ("b", "d", "d-posix"):
        ratios["stored c/%s" % other] = _ratio(stored("c"), stored(other))
    for variant in sorted(m for m in backup if m.startswith("c-")):
        for other in ("a", "b", "c"):
            ratios["backup %s/%s" % (variant, other)] = _ratio(wall(backup, variant), wall(backup, other))
        ratios["stored %s/b" % variant] = _ratio(stored(variant), stored("b"))
        ratios["stored %s/c" % variant] = _ratio(stored(variant), stored("c"))
    summary["ratios"] = ratios

    checks = {}

    def check(name, target, met, measured):
        checks[name] = {"target": target, "met": met, "measured": measured}

    if wall(backup, "b") and wall(backup, "c"):
        speed = wall(backup, "b") / wall(backup, "c")
        check("backup vs seed", ">= 3x faster than (b), storing no more bytes",
              speed >= 3 and stored("c") <= stored("b"),
              "%.2fx faster; stores %.1f MB vs %.1f MB (%.2fx)" % (speed, stored("c") / MB, stored("b") / MB,
                                                                   stored("c") / stored("b")))
    if wall(backup, "a"):
        ratio = wall(backup, "c") / wall(backup, "a")
        check("backup vs limit", "(c) <= 1.5x (a)", ratio <= 1.5,
              "%.2fx (%.1fs vs %.1fs)" % (ratio, wall(backup, "c"), wall(backup, "a")))
    tails = [run["wall_s"] - run["seen"]["pg_dump"][1] for run in results["backup"].get("c", [])
             if "pg_dump" in run.get("seen", {})]
    if tails and wall(backup, "upload"):
        tail = statistics.median(tails)
        complete = _median(results["backup"]["upload"], "complete_s") or 0.0
        check("upload overlaps dump", "after pg_dump exits, little more is left than completing the upload",
              tail - complete < 0.25 * wall(backup, "upload"),
              "the backup ended %.1fs after pg_dump exited; completing a multipart upload of that size takes "
              "%.1fs (the S3 server assembling the object), uploading all its bytes %.1fs"
              % (tail, complete, wall(backup, "upload")))
    for method, repo in (("d", "S3 repo"), ("d-posix", "posix repo")):
        if wall(backup, method):
            check("backup vs pgBackRest (%s)" % repo, "(c) faster than (d), storing fewer bytes",
                  wall(backup, "c") < wall(backup, method) and stored("c") < stored(method),
                  "%.2fx the time; stores %.1f MB vs %.1f MB (pgBackRest read %.1f MB)"
                  % (wall(backup, "c") / wall(backup, method), stored("c") / MB, stored(method) / MB,
                     (backup[method].get("read_bytes") or 0) / MB))
    peaks = {"backup": backup["c"]["peak_rss_bytes"], "restore": restore["c"]["peak_rss_bytes"]}
    check("peak RSS", "<= 200 MB (whole process tree) for backup and restore", max(peaks.values()) <= RSS_LIMIT,
          "backup %.0f MB, restore %.0f MB" % (peaks["backup"] / MB, peaks["restore"] / MB))
    if flat.get("backup c"):
        grown = {"backup": flat["backup c"]["peak_rss_bytes"], "restore": flat["restore c"]["peak_rss_bytes"]}
        flat_ok = all(grown[kind] <= peaks[kind] * 1.1 + 10 * MB for kind in peaks)
        check("RSS flat across sizes", "peak RSS at the larger size within 10% (+10 MB) of the smaller",
              flat_ok, "backup %.0f -> %.0f MB, restore %.0f -> %.0f MB"
              % (peaks["backup"] / MB, grown["backup"] / MB, peaks["restore"] / MB, grown["restore"] / MB))
    if wall(restore, "download"):
        bound = 1.3 * wall(restore, "a") + wall(restore, "download")
        check("restore vs limit", "(c) <= 1.3x (a) + download alone", wall(restore, "c") <= bound,
              "%.1fs vs 1.3 x %.1fs + %.1fs = %.1fs"
              % (wall(restore, "c"), wall(restore, "a"), wall(restore, "download"), bound))
    summary["checks"] = checks
    return summary


def _fmt(value, unit="s"):
    if value is None:
        return "-"
    if unit == "MB":
        return "%.1f" % (value / MB)
    return "%.2f" % value


def rows(summary, kind):
    """Table rows (label, wall, client cpu, server cpu, s3 cpu, other cpu, peak rss, stored) for one kind."""
    out = []
    labels = dict(LABELS[kind])
    labels.update((method, method) for method in summary[kind] if method not in labels)
    for method, label in labels.items():
        row = summary[kind].get(method)
        if not row:
            continue
        out.append([label, _fmt(row["wall_s"]), _fmt(row["client_cpu_s"]), _fmt(row["server_cpu_s"]),
                    _fmt(row["s3_cpu_s"]), _fmt(row["other_cpu_s"]), _fmt(row["peak_rss_bytes"], "MB"),
                    _fmt(row["stored_bytes"], "MB") if kind == "backup" else "-"])
    return out


HEADER = ["method", "wall s", "client CPU s", "PostgreSQL CPU s", "S3 server CPU s", "other CPU s", "peak RSS MB",
          "stored MB"]


def table(summary):
    """The plain-text table printed on stdout."""
    lines = []
    for kind in ("backup", "restore"):
        body = rows(summary, kind)
        widths = [max(len(str(cell)) for cell in column) for column in zip(HEADER, *body)]
        lines.append("")
        lines.append("%s (medians)" % kind.upper())
        lines.append("  ".join(str(cell).ljust(width) if i == 0 else str(cell).rjust(width)
                               for i, (cell, width) in enumerate(zip(HEADER, widths))))
        for row in body:
            lines.append("  ".join(str(cell).ljust(width) if i == 0 else str(cell).rjust(width)
                                   for i, (cell, width) in enumerate(zip(row, widths))))
    lines.append("")
    lines.append("RATIOS (wall time; < 1 means quankey-backup is faster)")
    for name, value in summary["ratios"].items():
        if value is not None:
            lines.append("  %-14s %.2f" % (name, value))
    lines.append("")
    lines.append("TARGETS")
    for name, item in summary["checks"].items():
        lines.append("  [%s] %-22s %s: %s" % ("met" if item["met"] else "MISSED", name, item["target"], item["measured"]))
    return "\n".join(lines)


def markdown_table(summary, kind):
    body = rows(summary, kind)
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in body]
    return "\n".join(lines)


def chart(summary, path):
    """Side-by-side wall times (and peak RSS); returns the path, or None without matplotlib."""
    try:
        import matplotlib  # pylint: disable=import-outside-toplevel
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
    except ImportError:
        return None
    colors = {"a": "#9e9e9e", "a-j2": "#bdbdbd", "b": "#e57373", "c": "#1e88e5", "d": "#ffb300", "d-posix": "#ffe082",
              "upload": "#90caf9", "download": "#90caf9"}
    fig, axes = plt.subplots(1, 3, figsize=(16, 5.2), gridspec_kw={"width_ratios": [3, 3, 2]})
    for axis, kind in zip(axes[:2], ("backup", "restore")):
        methods = [m for m in LABELS[kind] if m in summary[kind] and not m.startswith("c-")]
        walls = [summary[kind][m]["wall_s"] for m in methods]
        bars = axis.barh(range(len(methods)), walls, color=[colors.get(m, "#777") for m in methods])
        axis.set_yticks(range(len(methods)))
        axis.set_yticklabels([LABELS[kind][m].split(":")[0] if m in ("b",) else LABELS[kind][m] for m in methods], fontsize=8)
        axis.invert_yaxis()
        axis.set_xlabel("wall time, seconds (median)")
        axis.set_title(kind)
        for patch, method in zip(bars, methods):
            row = summary[kind][method]
            note = "%.1fs" % row["wall_s"]
            if kind == "backup" and row.get("stored_bytes"):
                note += ", %.0f MB stored" % (row["stored_bytes"] / MB)
            axis.text(patch.get_width(), patch.get_y() + patch.get_height() / 2, " " + note, va="center", fontsize=8)
        axis.set_xlim(0, max(walls) * 1.45)
    axis = axes[2]
    names, values = [], []
    for kind in ("backup", "restore"):
        for method in ("a", "b", "c", "d", "d-posix"):
            row = summary[kind].get(method)
            if row:
                names.append("%s %s" % (kind, method))
                values.append(row["peak_rss_bytes"] / MB)
    for key in ("backup c", "restore c"):
        if summary["flat"].get(key):
            names.append("%s (larger db)" % key)
            values.append(summary["flat"][key]["peak_rss_bytes"] / MB)
    axis.barh(range(len(names)), values, color=["#1e88e5" if " c" in n else "#bdbdbd" for n in names])
    axis.axvline(RSS_LIMIT / MB, color="#e53935", linestyle="--", linewidth=1)
    axis.set_yticks(range(len(names)))
    axis.set_yticklabels(names, fontsize=8)
    axis.invert_yaxis()
    axis.set_xlabel("peak RSS of the tree, MB")
    axis.set_xlim(0, max(values + [RSS_LIMIT / MB]) * 1.1)
    axis.set_title("memory")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def markdown(results, summary, chart_path, out_path):
    """docs/benchmarks.md: numbers, machine, exact commands, targets, and the hand-written analysis."""
    machine, config, dataset = results["machine"], results["config"], results["dataset"]
    rel_chart = os.path.relpath(chart_path, os.path.dirname(os.path.abspath(out_path))) if chart_path else None
    analysis_path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "analysis.md")
    lines = ["# Benchmarks", "",
             "Generated by `%s` on %s in %.0f s (do not edit by hand: rerun `make bench`; the analysis at "
             "the end comes from `bench/analysis.md`)." % (config["command"], machine["date"], results["seconds"]), ""]
    if rel_chart:
        lines += ["![backup and restore wall times, peak RSS](%s)" % rel_chart, ""]
    lines += ["## Machine", "",
              "| | |", "|---|---|"]
    for key in ("cpu", "cores", "memory_gb", "os", "kernel", "python", "postgresql", "pg_dump", "pgbackrest",
                "openssl", "gzip", "awscli", "moto", "zstandard", "cryptography"):
        lines.append("| %s | %s |" % (key, machine.get(key)))
    lines += ["", "Everything runs on this one machine: the PostgreSQL server, the clients and the S3 endpoint "
              "(`moto_server` on loopback HTTP, from `tests/testbed.py`) share the same %s cores. The S3 "
              "server's CPU is reported in its own column: on real S3 it would not be spent on the database "
              "host." % machine["cores"], ""]
    tables = dataset["tables"]
    lines += ["## Dataset", "",
              "`bench/datagen.py`: %.0f MB on disk (`pg_database_size`), `pg_dump -Fc -Z0` archive %.0f MB. "
              % (dataset["database_bytes"] / MB, dataset["dump_bytes"] / MB) +
              "Rows: " + ", ".join("%s %d (%.0f MB with indexes)" % (name, t["rows"], t["bytes"] / MB)
                                   for name, t in tables.items()) +
              ". Text, jsonb, uuid, timestamps, numeric, inet; `attachments.content` is random bytes "
              "(incompressible); 8 indexes. Generated in %.0f s." % dataset["seconds"], ""]
    lines += ["## Backup", "", "Medians of %d interleaved repetitions. Stored = bytes of the backup's data "
              "objects in the bucket (pgBackRest: its backup set plus the WAL it needs to be consistent)." % config["repeat"], "",
              markdown_table(summary, "backup"), ""]
    for method in ("d", "d-posix"):
        d = summary["backup"].get(method)
        if d:
            lines += ["%s: pgBackRest copies the cluster's files: it read %.0f MB (all databases, indexes included) "
                      "to store %.0f MB; `process-max=%d`." % (
                          LABELS["backup"][method], (d.get("read_bytes") or 0) / MB, d["stored_bytes"] / MB,
                          config["pgbackrest_processes"]), ""]
    if results["extra"].get("pgbackrest_s3"):
        lines += ["pgBackRest's S3 repository is %s." % results["extra"]["pgbackrest_s3"], ""]
    lines += ["## Restore", "", markdown_table(summary, "restore"), ""]
    for method in ("d", "d-posix"):
        row = summary["restore"].get(method)
        if row and row.get("start_recovery_s") is not None:
            lines += ["%s only lays the files down; starting that cluster (WAL replay from the repository "
                      "until consistent, then accepting connections) took a further %.1f s (median), not "
                      "included above." % (LABELS["restore"][method], row["start_recovery_s"]), ""]
    lines += ["## Where the time goes", "",
              "Everything shares %d cores, so a run cannot take less wall time than its CPU seconds divided by "
              "the cores (the floor). The S3 server's CPU would not be spent on a database host talking to real "
              "S3: the last column is the floor without it." % machine["cores"], "",
              "| method | wall s | CPU s (client + PostgreSQL + S3 server) | floor s | floor without S3 server s |",
              "|---|---|---|---|---|"]
    for kind in ("backup", "restore"):
        for method in ("a", "b", "c", "c-zstd2", "c-zstd3", "d", "d-posix"):
            row = summary[kind].get(method)
            if row:
                cpu = row["client_cpu_s"] + row["server_cpu_s"] + row["s3_cpu_s"]
                lines.append("| %s %s | %.1f | %.1f + %.1f + %.1f = %.1f | %.1f | %.1f |" % (
                    kind, method, row["wall_s"], row["client_cpu_s"], row["server_cpu_s"], row["s3_cpu_s"], cpu,
                    cpu / machine["cores"], (cpu - row["s3_cpu_s"]) / machine["cores"]))
    lines.append("")
    lines += ["## Ratios", "", "| ratio | value |", "|---|---|"]
    for name, value in summary["ratios"].items():
        if value is not None:
            lines.append("| %s | %.2f |" % (name, value))
    lines += ["", "Wall-time ratios of medians measured in the same run; for `stored`, bytes.", ""]
    lines += ["## Targets", "", "| target | | measured |", "|---|---|---|"]
    for name, item in summary["checks"].items():
        lines.append("| %s: %s | %s | %s |" % (name, item["target"], "met" if item["met"] else "**missed**", item["measured"]))
    lines.append("")
    if summary["flat"]:
        flat = results["flat_dataset"]
        lines += ["## Memory flatness", "",
                  "The same database grown to %.0f MB on disk (archive %.0f MB), %d repetition(s):" % (
                      flat["database_bytes"] / MB, flat["dump_bytes"] / MB, config["flat_repeat"]), "",
                  "| run | size | wall s | peak RSS MB (tree) | largest process MB |", "|---|---|---|---|---|"]
        for key, kind, method in (("backup a", "backup", "a"), ("backup c", "backup", "c"), ("restore c", "restore", "c")):
            small, large = summary[kind].get(method), summary["flat"].get(key)
            if small and large:
                for label, row in (("%.0f MB" % (dataset["database_bytes"] / MB), small),
                                   ("%.0f MB" % (flat["database_bytes"] / MB), large)):
                    lines.append("| %s | %s | %.2f | %.0f | %.0f (%s) |" % (
                        key, label, row["wall_s"], row["peak_rss_bytes"] / MB, row["peak_proc_rss_bytes"] / MB, row["peak_proc"]))
        lines.append("")
    disturbed = results.get("disturbed", [])
    lines += ["## Foreign load", "",
              "Other processes on this shared machine (other engineers' jobs) take CPU too. The bench runs at "
              "niceness %s (PostgreSQL, moto and every measured command inherit it) so that they disturb it "
              "less. The `other CPU` column is what the whole machine spent meanwhile on anything but the "
              "measured command, PostgreSQL and the S3 server: other users' jobs, but also kernel threads "
              "working for the run (writeback of a restored database's files) and the bench's own 50 ms "
              "sampler, so it is not all disturbance. "
              "Before each measurement the bench waits up to %.0f s for an idle machine, and a measurement "
              "during which other processes took more than %.0f%% of the machine is taken again (at most %d "
              "times; the last one is kept). Over that threshold: %d measurement(s)%s." % (
                  config.get("nice", 0), config.get("quiet_wait", 0), config.get("max_foreign_load", 0.1) * 100,
                  config.get("retries", 0), len(disturbed),
                  (" (" + ", ".join("%s %s: %d" % (kind, method, count) for (kind, method), count
                                    in sorted(collections.Counter((d["kind"], d["method"]) for d in disturbed).items()))
                   + ")") if disturbed else ""), ""]
    lines += ["## Fleet", ""]
    fleet = results.get("fleet")
    if isinstance(fleet, dict):
        first, second = fleet["first_run_changed"], fleet["second_run_changed"]
        lines += ["`playbooks/setup_backups.yml` on %d Molecule-style hosts (chroot overlays of one Debian 12 base, "
                  "`bench/fleet.py` with the machinery of `molecule/shared`; PostgreSQL and the IAM-enforcing S3 "
                  "endpoint on this machine), `forks: 8`:" % fleet["hosts"], "",
                  "| run | wall s | changed tasks per host |", "|---|---|---|",
                  "| first | %.1f | %s |" % (fleet["first_run_s"], ", ".join("%s %d" % item for item in sorted(first.items()))),
                  "| second (no change expected) | %.1f | %s |" % (
                      fleet["second_run_s"], ", ".join("%s %d" % item for item in sorted(second.items()))), "",
                  "Creating the hosts and services took %.1f s (not included). `make bench` runs this "
                  "(`bench/fleet.py --hosts 8`) after the measurements once the playbook and Molecule have "
                  "landed; `bench/run.py --fleet-only` adds it to an existing results.json." % fleet["create_s"], ""]
    else:
        lines += ["Wall time of `playbooks/setup_backups.yml` on 8 Molecule-style hosts: %s." % fleet, ""]
    lines += ["## How it was measured", "",
              "- wall: from fork to exit of the command (`bench/measure.py`).",
              "- client CPU: user + system time from `wait4()` of the command, which includes every descendant "
              "it waited for (bash, pg_dump, gzip, openssl, aws, pg_restore, Python threads).",
              "- PostgreSQL CPU: utime + stime of the postmaster and all its live children plus the postmaster's "
              "cutime + cstime (reaped backends), from /proc, before and after.",
              "- S3 server CPU: the same for `moto_server`%s." % (
                  " and the socat TLS terminator in front of it (used by pgBackRest only)"
                  if results["extra"].get("pgbackrest_s3") else ""),
              "- peak RSS: the command's process tree walked every 50 ms through "
              "`/proc/PID/task/*/children`, RSS summed per sample (shared pages count once per process, so "
              "this is an upper bound); the largest single process is shown in the flatness table.",
              "- %d repetitions of each method, interleaved; medians for times, maximum for peak RSS." % config["repeat"],
              "- Restores go into a new database each time, dropped afterwards (not timed). moto keeps objects in "
              "memory (%.0f MB RSS at the end of the run)." % (results.get("moto_rss_bytes", 0) / MB), ""]
    lines += ["## Exact commands", "", "```sh", "make bench          # = %s" % config["command"],
              "make bench-smoke    # CI: tiny sizes, 1 repetition, output in build/bench/smoke/", "```", "",
              "(a) backup: `pg_dump -Fc -Z0 -d benchdb > /dev/null`; (a) restore: `createdb -T template0 X && "
              "pg_restore --exit-on-error [-j 2] -d X plain.dump`.", "",
              "(b) the seed's backup, as run (`bash -c`):", "", "```bash", config["seed_backup_script"], "```", "",
              "(b) the seed's restore:", "", "```bash", config["seed_restore_script"], "```", "",
              "(c) `quankey-backup -q backup --json` and `quankey-backup -q restore --backup latest --target-db X "
              "--json` with the test bed's environment (`S3_PREFIX=quankey`, defaults otherwise: zstd, AES-256-GCM).", "",
              "(d) `pgbackrest --stanza=bench --type=full backup` and `pgbackrest --stanza=bench --pg1-path=EMPTY "
              "restore`, as the postgres user, with `repo1-cipher-type=aes-256-cbc`, `compress-type=zst`, "
              "`process-max=%d`, `start-fast=y`, `archive_command` = `pgbackrest archive-push` during its "
              "backups only (`/bin/true` otherwise, so its WAL archiving does not load the other methods)."
              % config["pgbackrest_processes"], ""]
    if results["notes"]:
        lines += ["Notes: " + "; ".join(results["notes"]), ""]
    if os.path.exists(analysis_path):
        with open(analysis_path, encoding="utf-8") as handle:
            lines += [handle.read().rstrip(), ""]
    return "\n".join(lines)
