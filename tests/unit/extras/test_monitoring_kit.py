# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The monitoring kit (extras/monitoring/): its alert rules and dashboard use only the metrics the exporters define
(one source for the names: workflows/runrecord.py's METRICS and the monitor script's), promtool checks and unit-tests
the rules, every alert links to its runbook in docs/MONITORING.md, and the kit is part of the built collection."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import fnmatch
import json
import os
import re
import shutil
import subprocess
import types

import pytest
import yaml

from ansible_collections.quankey.backup.plugins.module_utils.workflows import runrecord

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))
KIT = os.path.join(ROOT, "extras", "monitoring")
RULES = os.path.join(KIT, "prometheus", "quankey-backup.rules.yml")
RULE_TESTS = [os.path.join(KIT, "prometheus", name)
              for name in ("quankey-backup.rules.test.yml", "quankey-backup.rules.long.test.yml")]
DASHBOARD = os.path.join(KIT, "grafana", "quankey-backup.dashboard.json")
MONITOR = os.path.join(ROOT, "roles", "backup_monitor", "files", "quankey-backup-monitor.py")
DOC = os.path.join(ROOT, "docs", "MONITORING.md")

# PromQL words that are no metric: aggregation modifiers, set and vector-matching keywords.
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset"}


def _monitor():
    module = types.ModuleType("quankey_backup_monitor")
    with open(MONITOR) as handle:
        exec(compile(handle.read(), MONITOR, "exec"), module.__dict__)  # pylint: disable=exec-used
    return module


def exported_names():
    """Every metric name an exporter writes: the runs' record and the health check's."""
    monitor = _monitor()
    return (set(name for name, _kind, _help in runrecord.METRICS) | set(name for name, _help in monitor.METRICS)
            | {monitor.RUN_LOST[0]})


def metric_names(expr):
    """The metric names a PromQL expression (or a Grafana label_values() query) reads."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings (label values, regexes)
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)  # label lists
    text = re.sub(r"\$\{?\w+\}?", " ", text)  # Grafana variables
    text = re.sub(r"label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*,\s*\w+\s*\)", r"\1", text)  # metric, label
    names = set()
    for match in re.finditer(r"(?<![\w.])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?", text):
        word, call = match.group(1), match.group(2)
        if call or word in KEYWORDS or re.match(r"^\d", word):
            continue
        names.add(word)
    return names


def test_the_name_reader_finds_metrics_and_skips_functions_keywords_and_labels():
    assert metric_names('max by (host, database) (time() - quankey_backup_x{command="backup",host=~"$host"}) > 36 * 3600'
                        ) == {"quankey_backup_x"}
    assert metric_names("a > b or (c unless on(host) d) and rate(e[5m]) > bool 1") == {"a", "b", "c", "d", "e"}
    assert metric_names('label_values(quankey_backup_status{host=~"$host"}, database)') == {"quankey_backup_status"}
    assert metric_names("count(quankey_backup_status == 2) or vector(0)") == {"quankey_backup_status"}


def rule_expressions():
    with open(RULES) as handle:
        groups = yaml.safe_load(handle)["groups"]
    return [(rule["alert"], rule["expr"]) for group in groups for rule in group["rules"]]


def dashboard_expressions():
    with open(DASHBOARD) as handle:
        dashboard = json.load(handle)
    found = []

    def walk(panels):
        for panel in panels:
            for target in panel.get("targets", []):
                found.append((panel["title"], target["expr"]))
            walk(panel.get("panels", []))
    walk(dashboard["panels"])
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            found.append(("$" + variable["name"], query["query"] if isinstance(query, dict) else query))
    return found


def test_the_dashboard_queries_only_metrics_we_export():
    exported = exported_names()
    expressions = dashboard_expressions()
    assert len(expressions) > 20
    used = set()
    for title, expr in expressions:
        names = metric_names(expr)
        assert names, "%s: %r reads no metric" % (title, expr)
        assert names <= exported, "%s: %s not exported by quankey.backup" % (title, ", ".join(sorted(names - exported)))
        used |= names
    # the fleet view shows the health check's, the runs' and the drills' metrics
    assert {"quankey_backup_status", "quankey_backup_run_last_exit_code", "quankey_backup_drill_last_rto_seconds",
            "quankey_backup_run_last_stage_duration_seconds"} <= used


def test_the_alerts_use_only_metrics_we_export_and_each_links_to_its_runbook():
    exported = exported_names()
    with open(DOC) as handle:
        anchors = set(re.sub(r"[^a-z0-9 _-]", "", line[4:].strip().lower()).replace(" ", "-")
                      for line in handle if line.startswith("### "))
    with open(RULES) as handle:
        rules = [rule for group in yaml.safe_load(handle)["groups"] for rule in group["rules"]]
    for rule in rules:
        names = metric_names(rule["expr"])
        assert names and names <= exported, "%s: %s" % (rule["alert"], ", ".join(sorted(names - exported)))
        assert rule["labels"]["severity"] in ("critical", "warning")
        url = rule["annotations"]["runbook_url"]
        assert url.endswith("docs/MONITORING.md#" + rule["alert"].lower()), url
        assert rule["alert"].lower() in anchors, "docs/MONITORING.md has no runbook section ### %s" % rule["alert"]
    assert {"QuankeyBackupTooOld", "QuankeyBackupRunFailed", "QuankeyBackupRunNotFinished", "QuankeyBackupHealthCritical",
            "QuankeyBackupHealthWarning", "QuankeyBackupCheckNotUp", "QuankeyBackupDrillFailed",
            "QuankeyBackupDrillTooOld", "QuankeyBackupReplicaBehind"} <= set(rule["alert"] for rule in rules)


def test_every_alert_is_unit_tested():
    tested = set()
    for path in RULE_TESTS:
        with open(path) as handle:
            tested |= set(case["alertname"] for test in yaml.safe_load(handle)["tests"]
                          for case in test["alert_rule_test"] if case.get("exp_alerts"))
    assert set(name for name, _expr in rule_expressions()) == tested


def test_every_exported_metric_is_documented():
    with open(DOC) as handle:
        text = handle.read()
    missing = sorted(name for name in exported_names() if "`%s`" % name not in text)
    assert not missing, "docs/MONITORING.md does not describe %s" % ", ".join(missing)


def test_the_kit_is_in_the_built_collection():
    with open(os.path.join(ROOT, "galaxy.yml")) as handle:
        ignored = yaml.safe_load(handle).get("build_ignore") or []
    for path in [RULES, DASHBOARD] + RULE_TESTS:
        relative = os.path.relpath(path, ROOT)
        parts = relative.split(os.sep)
        prefixes = [os.sep.join(parts[:index]) for index in range(1, len(parts) + 1)]
        assert not [pattern for pattern in ignored for prefix in prefixes if fnmatch.fnmatch(prefix, pattern)], relative


PROMTOOL = shutil.which("promtool")


@pytest.mark.skipif(not PROMTOOL, reason="promtool is not installed: apt-get install prometheus (.ci/run does)")
def test_promtool_checks_the_rules():
    done = subprocess.run([PROMTOOL, "check", "rules", RULES], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, check=False)
    assert done.returncode == 0 and "SUCCESS: %d rules found" % len(rule_expressions()) in done.stdout, done.stdout


@pytest.mark.skipif(not PROMTOOL, reason="promtool is not installed: apt-get install prometheus (.ci/run does)")
def test_promtool_unit_tests_the_rules():
    done = subprocess.run([PROMTOOL, "test", "rules"] + [os.path.basename(path) for path in RULE_TESTS],
                          cwd=os.path.dirname(RULES), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, check=False)
    assert done.returncode == 0 and done.stdout.count("SUCCESS") == len(RULE_TESTS), done.stdout
