"""Medians, ratios and target checks from a bench run's results; the stdout table, the chart, the markdown."""

import collections
import os
import statistics

MB = 1e6
GB = 1e9
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
        "e": "(e) barman-cloud-backup, S3",
        "e-gzip": "(e) barman-cloud-backup --gzip, S3",
        "e-snappy": "(e) barman-cloud-backup --snappy, S3",
        "e-bzip2": "(e) barman-cloud-backup --bzip2, S3",
        "e-none": "(e) barman-cloud-backup uncompressed, S3",
        "upload": "upload alone (engine multipart, c's size)",
    },
    "restore": {
        "a": "(a) createdb + pg_restore from a local file",
        "a-j2": "(a) same with pg_restore -j 2",
        "b": "(b) seed: aws s3 cp, sha256sum, openssl -d | gunzip | pg_restore",
        "c": "(c) quankey-backup restore",
        "c-j1": "(c) the same with --jobs 1",
        "d": "(d) pgbackrest restore, S3 repo (files only)",
        "d-posix": "(d) pgbackrest restore, posix repo (files only)",
        "e": "(e) barman-cloud-restore, S3 (files only)",
        "e-gzip": "(e) barman-cloud-restore of --gzip (files only)",
        "e-snappy": "(e) barman-cloud-restore of --snappy (files only)",
        "e-bzip2": "(e) barman-cloud-restore of --bzip2 (files only)",
        "e-none": "(e) barman-cloud-restore of uncompressed (files only)",
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
    barmans = barman_methods(summary)
    for other in ("a", "b", "d", "d-posix") + barmans:
        ratios["backup c/%s" % other] = _ratio(wall(backup, "c"), wall(backup, other))
        ratios["restore c/%s" % other] = _ratio(wall(restore, "c"), wall(restore, other))
    for other in ("b", "d", "d-posix") + barmans:
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
    summary["unavailable"] = dict(results.get("unavailable", {}))
    summary["targets"] = targets(results, summary)
    return summary


def barman_methods(summary):
    """The barman-cloud variants measured (e-gzip, e-none, ...), in a stable order."""
    return tuple(sorted(m for m in set(summary["backup"]) | set(summary["restore"]) if m.startswith("e-")))


def _target(name, definition, value, op, threshold, numbers, missing=None):
    """One row of the Targets table; ``value`` None: not measured (``missing`` says why)."""
    if value is None:
        return {"name": name, "definition": definition, "ratio": None, "op": op, "threshold": threshold,
                "met": None, "numbers": "not measured: %s" % (missing or "a method it needs did not run")}
    met = value <= threshold if op == "<=" else value < threshold
    return {"name": name, "definition": definition, "ratio": value, "op": op, "threshold": threshold, "met": met,
            "numbers": numbers}


def cpu_floor(row, cores):
    """A run's CPU floor: (client CPU + PostgreSQL CPU) / cores, without the S3 server's CPU (real S3 is elsewhere)."""
    return (row["client_cpu_s"] + row["server_cpu_s"]) / cores


def targets(results, summary):
    """Issue 15's targets, each a ratio of numbers measured in this run, with its threshold and whether it was met."""
    backup, restore = summary["backup"], summary["restore"]
    cores = results.get("machine", {}).get("cores") or os.cpu_count()
    unavailable = results.get("unavailable", {})
    out = []
    c_backup, c_restore = backup.get("c"), restore.get("c")
    d_backup = backup.get("d")
    db_bytes = results.get("dataset", {}).get("database_bytes")

    # 1. client CPU per GB: (c) per GB of the database it dumps, (d) per GB of the cluster files it read
    value = numbers = None
    if c_backup and d_backup and db_bytes and d_backup.get("read_bytes"):
        c_per_gb = c_backup["client_cpu_s"] / (db_bytes / GB)
        d_per_gb = d_backup["client_cpu_s"] / (d_backup["read_bytes"] / GB)
        value = _ratio(c_per_gb, d_per_gb)
        numbers = ("(c) %.2f s for %.2f GB = %.2f s/GB; (d) %.2f s for %.2f GB read = %.2f s/GB"
                   % (c_backup["client_cpu_s"], db_bytes / GB, c_per_gb, d_backup["client_cpu_s"],
                      d_backup["read_bytes"] / GB, d_per_gb))
    out.append(_target("backup client CPU per GB, (c) / (d) pgBackRest S3 repo",
                       "client CPU seconds per GB backed up: (c) per GB of the database (`pg_database_size`), "
                       "(d) per GB of cluster files it read", value, "<=", 0.6, numbers,
                       unavailable.get("d") or "pgBackRest's S3 repository was not measured in this run"))

    # 2. backup wall against its own CPU floor
    value = numbers = None
    if c_backup:
        floor = cpu_floor(c_backup, cores)
        value = _ratio(c_backup["wall_s"], floor)
        numbers = ("wall %.2f s; floor (%.2f client + %.2f PostgreSQL CPU s) / %d cores = %.2f s"
                   % (c_backup["wall_s"], c_backup["client_cpu_s"], c_backup["server_cpu_s"], cores, floor))
    out.append(_target("backup wall (c) / its CPU floor",
                       "floor = (client CPU + PostgreSQL CPU) / cores, without the S3 server's CPU", value, "<=", 1.15,
                       numbers))

    # 3. restore against pg_restore -j 2 from a local file
    value = numbers = None
    if c_restore and restore.get("a-j2"):
        value = _ratio(c_restore["wall_s"], restore["a-j2"]["wall_s"])
        numbers = "%.2f s vs %.2f s" % (c_restore["wall_s"], restore["a-j2"]["wall_s"])
    out.append(_target("restore wall (c) / (a) pg_restore -j 2 from a local file", "wall times", value, "<=", 1.1,
                       numbers))

    # 4, 5. against barman-cloud: its fastest variant measured (by wall time), named
    why = ("(e) barman-cloud not available: %s" % unavailable["e"]) if unavailable.get("e") else (
        "(e) barman-cloud was not measured in this run")
    e_backups = {m: backup[m] for m in barman_methods(summary) if m in backup}
    value = numbers = None
    if c_backup and e_backups:
        method = min(e_backups, key=lambda m: e_backups[m]["wall_s"])
        value = _ratio(c_backup["wall_s"], e_backups[method]["wall_s"])
        numbers = "%.2f s vs %.2f s, %s (%s)" % (c_backup["wall_s"], e_backups[method]["wall_s"],
                                                 LABELS["backup"].get(method, method), _others(e_backups, method))
    out.append(_target("backup wall (c) / (e) barman-cloud-backup", "wall times; (e) its fastest variant in this run",
                       value, "<", 1.0, numbers, why))
    e_restores = {m: restore[m]["wall_s"] + restore[m]["start_recovery_s"] for m in barman_methods(summary)
                  if m in restore and restore[m].get("start_recovery_s") is not None}
    value = numbers = None
    if c_restore and e_restores:
        method = min(e_restores, key=e_restores.get)
        row = restore[method]
        value = _ratio(c_restore["wall_s"], e_restores[method])
        numbers = ("%.2f s vs %.2f s, %s: %.2f s + starting the cluster to consistency %.2f s"
                   % (c_restore["wall_s"], e_restores[method], LABELS["restore"].get(method, method), row["wall_s"],
                      row["start_recovery_s"]))
    out.append(_target("restore wall (c) / (e) barman-cloud-restore + start",
                       "(e) = its files laid down + `pg_ctl start -w` until the cluster accepts connections; its "
                       "fastest variant in this run", value, "<", 1.0, numbers, why))

    # 6. restore memory
    value = numbers = None
    if c_restore:
        value = c_restore["peak_rss_bytes"] / RSS_LIMIT
        numbers = "%.0f MB (whole process tree) of %.0f MB" % (c_restore["peak_rss_bytes"] / MB, RSS_LIMIT / MB)
    out.append(_target("peak RSS of restore (c) / 200 MB", "peak RSS of the restore's process tree", value, "<=", 1.0,
                       numbers))
    return out


def _others(rows, chosen):
    others = ["%s %.2f s" % (m, rows[m]["wall_s"]) for m in sorted(rows) if m != chosen]
    return "others: " + ", ".join(others) if others else "the only variant measured"


def _verdict(item):
    if item["met"] is None:
        return "not measured"
    return "met" if item["met"] else "missed"


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
            if method in summary.get("unavailable", {}):
                out.append([label, "not available: %s" % summary["unavailable"][method]] + ["-"] * 6)
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
    lines.append("TARGETS (issue 15; ratios of this run's medians)")
    for item in summary.get("targets", []):
        measured = "%.2f (%s)" % (item["ratio"], item["numbers"]) if item["ratio"] is not None else item["numbers"]
        lines.append("  [%s] %s %s %s: %s" % (_verdict(item), item["name"], item["op"], item["threshold"], measured))
    lines.append("")
    lines.append("OTHER CHECKS")
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
    colors = {"a": "#9e9e9e", "a-j2": "#bdbdbd", "b": "#e57373", "c": "#1e88e5", "c-j1": "#64b5f6", "d": "#ffb300",
              "d-posix": "#ffe082", "e-gzip": "#8e24aa", "e-none": "#ce93d8", "e-snappy": "#ab47bc",
              "e-bzip2": "#6a1b9a", "upload": "#90caf9", "download": "#90caf9"}
    fig, axes = plt.subplots(1, 3, figsize=(16, 5.2), gridspec_kw={"width_ratios": [3, 3, 2]})
    for axis, kind in zip(axes[:2], ("backup", "restore")):
        methods = [m for m in LABELS[kind] if m in summary[kind] and not m.startswith("c-z")]
        walls = [summary[kind][m]["wall_s"] for m in methods]
        bars = axis.barh(range(len(methods)), walls, color=[colors.get(m, "#777") for m in methods])
        axis.set_yticks(range(len(methods)))
        axis.set_yticklabels([LABELS[kind][m].split(":")[0] if m in ("b",) else LABELS[kind][m] for m in methods], fontsize=8)
        axis.invert_yaxis()
        axis.set_xlabel("wall time, seconds (median)")
        axis.set_title(kind)
        for patch, method in zip(bars, methods):
            row = summary[kind][method]
            note, end = "%.1fs" % row["wall_s"], patch.get_width()
            if row.get("start_recovery_s") is not None:  # files only: starting the cluster comes on top
                axis.barh(patch.get_y() + patch.get_height() / 2, row["start_recovery_s"], left=end,
                          height=patch.get_height(), color=colors.get(method, "#777"), alpha=0.35, hatch="//")
                note += " + %.1fs start" % row["start_recovery_s"]
                end += row["start_recovery_s"]
            if kind == "backup" and row.get("stored_bytes"):
                note += ", %.0f MB stored" % (row["stored_bytes"] / MB)
            axis.text(end, patch.get_y() + patch.get_height() / 2, " " + note, va="center", fontsize=8)
        axis.set_xlim(0, max(w + (summary[kind][m].get("start_recovery_s") or 0) for w, m in zip(walls, methods))
                      * 1.55)
    axis = axes[2]
    names, values = [], []
    for kind in ("backup", "restore"):
        for method in ("a", "b", "c", "d", "d-posix") + barman_methods(summary):
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
                "barman-cloud", "openssl", "gzip", "awscli", "moto", "zstandard", "cryptography"):
        if key in machine:
            lines.append("| %s | %s |" % (key, machine[key]))
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
    barman = results["extra"].get("barman")
    e_backups = [(m, summary["backup"][m]) for m in barman_methods(summary) if m in summary["backup"]]
    if e_backups and barman:
        lines += ["(e): %s copies the cluster's files (all databases, indexes included: %.0f MB) into one tar "
                  "stream, compressed in one Python thread (gzip and bzip2 at level 9, fixed), uploaded with "
                  "`--jobs %d` to the same S3 endpoint and bucket (prefix `barman-COMPRESSION/`, plain HTTP like "
                  "(c)). Stored, with the WAL it needs: %s. It has no client-side encryption (only S3 server-side "
                  "encryption), so it spends no CPU on it. Each compression is its own row; the targets compare with "
                  "the fastest." % (
                      barman["version"], (e_backups[0][1].get("read_bytes") or 0) / MB, barman["jobs"],
                      ", ".join("%s %.0f MB" % (m, row["stored_bytes"] / MB) for m, row in e_backups)), ""]
    lines += ["## Restore", "", markdown_table(summary, "restore"), ""]
    for method in ("d", "d-posix") + barman_methods(summary):
        row = summary["restore"].get(method)
        if row and row.get("start_recovery_s") is not None:
            lines += ["%s only lays the files down; starting that cluster (WAL replay from the repository "
                      "until consistent, then accepting connections) took a further %.1f s (median), not "
                      "included above: %.1f s in all." % (LABELS["restore"][method], row["start_recovery_s"],
                                                          row["wall_s"] + row["start_recovery_s"]), ""]
    lines += ["## Where the time goes", "",
              "Everything shares %d cores, so a run cannot take less wall time than its CPU seconds divided by "
              "the cores (the floor). The S3 server's CPU would not be spent on a database host talking to real "
              "S3: the last column is the floor without it." % machine["cores"], "",
              "| method | wall s | CPU s (client + PostgreSQL + S3 server) | floor s | floor without S3 server s |",
              "|---|---|---|---|---|"]
    for kind in ("backup", "restore"):
        for method in ("a", "a-j2", "b", "c", "c-j1", "c-zstd2", "c-zstd3", "d", "d-posix") + barman_methods(summary):
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
    lines += ["## Targets", "",
              "Issue 15's targets, each a ratio of medians measured in this run (nothing here is typed in by hand: "
              "the verdict is computed from the numbers). The CPU floor of a run is (client CPU + PostgreSQL "
              "CPU) / %d cores: the S3 server's CPU is left out because real S3 runs elsewhere." % machine["cores"], "",
              "| target | definition | ratio | threshold | result | from |", "|---|---|---|---|---|---|"]
    for item in summary["targets"]:
        lines.append("| %s | %s | %s | %s %s | %s | %s |" % (
            item["name"], item["definition"], "%.2f" % item["ratio"] if item["ratio"] is not None else "-", item["op"],
            item["threshold"], {"met": "met", "missed": "**missed**"}.get(_verdict(item), "not measured"),
            item["numbers"]))
    lines += ["", "## Other checks", "", "| check | | measured |", "|---|---|---|"]
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
              "--json` (its default `--jobs`) with the test bed's environment (`S3_PREFIX=quankey`, defaults otherwise: zstd, AES-256-GCM).", "",
              "(d) `pgbackrest --stanza=bench --type=full backup` and `pgbackrest --stanza=bench --pg1-path=EMPTY "
              "restore`, as the postgres user, with `repo1-cipher-type=aes-256-cbc`, `compress-type=zst`, "
              "`process-max=%d`, `start-fast=y`, `archive_command` = `pgbackrest archive-push` during its "
              "backups only (`/bin/true` otherwise, so its WAL archiving does not load the other methods)."
              % config["pgbackrest_processes"], ""]
    if results["extra"].get("barman"):
        barman = results["extra"]["barman"]
        lines += ["(e) `barman-cloud-backup --cloud-provider aws-s3 --endpoint-url URL [--COMPRESSION] "
                  "--immediate-checkpoint --jobs %d s3://quankey-bench/barman-COMPRESSION bench` (COMPRESSION: %s) "
                  "and `barman-cloud-restore --cloud-provider aws-s3 --endpoint-url URL "
                  "s3://quankey-bench/barman-COMPRESSION bench BACKUP_ID EMPTY`, as the postgres user, credentials "
                  "from the environment; `archive_command` = `barman-cloud-wal-archive [--COMPRESSION] ...` during "
                  "its backups only (`/bin/true` otherwise); the restored cluster is started with `restore_command` "
                  "= `barman-cloud-wal-restore ... %%f %%p` and `recovery.signal`, as barman's documentation says."
                  % (barman["jobs"], ", ".join(barman["compressions"])), ""]
    for method, why in sorted(results.get("unavailable", {}).items()):
        lines += ["%s: not available in this run: %s." % (LABELS["backup"].get(method, method), why), ""]
    if results["notes"]:
        lines += ["Notes: " + "; ".join(results["notes"]), ""]
    if os.path.exists(analysis_path):
        with open(analysis_path, encoding="utf-8") as handle:
            lines += [handle.read().rstrip(), ""]
    return "\n".join(lines)
