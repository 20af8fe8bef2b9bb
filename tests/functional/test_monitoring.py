# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Every run leaves a trace (BACKUP_METRICS_DIR, workflows/runrecord.py) on the real test bed, and the monitoring
kit end to end: node_exporter's textfile collector reads what the exporters write, a real Prometheus scrapes it every
second with the kit's rules, and the "backup too old" and "last run failed" alerts fire (docs/MONITORING.md)."""

import json
import os
import re
import shutil
import signal
import subprocess
import time
import types
import urllib.request
from pathlib import Path

import pytest

from hostcommand import CLI, new_name, run_cli
from testbed import free_port

from ansible_collections.quankey.backup.plugins.module_utils.workflows import runrecord

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "extras" / "monitoring" / "prometheus" / "quankey-backup.rules.yml"
MONITOR = ROOT / "roles" / "backup_monitor" / "files" / "quankey-backup-monitor.py"
NODE_EXPORTER = shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")
PROMETHEUS = shutil.which("prometheus")
SAMPLE = re.compile(r'^(\w+)\{([^}]*)\} (\S+)$')


def _monitor():
    module = types.ModuleType("quankey_backup_monitor")
    exec(compile(MONITOR.read_text(), str(MONITOR), "exec"), module.__dict__)  # pylint: disable=exec-used
    return module


def _samples(path):
    """{(name, labels text): value} of a textfile."""
    found = {}
    for line in path.read_text().splitlines():
        match = SAMPLE.match(line)
        if match:
            found[(match.group(1), match.group(2))] = float(match.group(3))
    return found


@pytest.fixture
def env(testbed, source, tmp_path):
    values = testbed.backup_env(source)
    values["S3_PREFIX"] = new_name("metrics")
    values["BACKUP_HOST_ID"] = "db1"
    values["BACKUP_METRICS_DIR"] = str(tmp_path / "textfile")
    (tmp_path / "textfile").mkdir()
    return values


def test_backups_and_prunes_record_their_last_run_success_and_failure(env, source, tmp_path):
    textfile = tmp_path / "textfile"
    before = time.time()
    taken = json.loads(run_cli(env, "backup", "--json", check=0).stdout)
    after = time.time()
    prom = textfile / ("quankey_backup_backup_%s.prom" % source)
    labels = 'command="backup",host="db1",database="%s"' % source
    found = _samples(prom)
    assert found[("quankey_backup_run_last_exit_code", labels)] == 0
    start = found[("quankey_backup_run_last_start_timestamp_seconds", labels)]
    end = found[("quankey_backup_run_last_end_timestamp_seconds", labels)]
    assert before <= start <= end <= after
    assert found[("quankey_backup_run_last_success_timestamp_seconds", labels)] == end
    stages = dict((stage, found[("quankey_backup_run_last_stage_duration_seconds", labels + ',stage="%s"' % stage)])
                  for stage in taken["stage_seconds"])
    assert sorted(stages) == ["commit", "dump_upload", "prepare"]
    assert all(abs(stages[stage] - taken["stage_seconds"][stage]) < 0.001 for stage in stages)
    assert found[("quankey_backup_run_last_bytes", labels + ',kind="stored"')] == taken["size_bytes"]
    assert found[("quankey_backup_run_last_bytes", labels + ',kind="dump"')] == taken["dump_bytes"]
    succeeded = end

    # a backup that fails (no such database): exit 4 recorded, the last success kept
    run_cli(dict(env, DB_NAME=source + "_gone"), "backup", check=4)
    gone = _samples(textfile / ("quankey_backup_backup_%s_gone.prom" % source))
    gone_labels = 'command="backup",host="db1",database="%s_gone"' % source
    assert gone[("quankey_backup_run_last_exit_code", gone_labels)] == 4
    assert ("quankey_backup_run_last_success_timestamp_seconds", gone_labels) not in gone
    state = json.loads((textfile / ("quankey_backup_backup_%s_gone.json" % source)).read_text())
    assert state["state"] == "ended" and state["failures"] == 1 and "does not exist" in state["error"]
    run_cli(dict(env, BACKUP_ENCRYPTION_KEY="not base64!"), "backup", check=3)  # a settings error is a run too
    found = _samples(prom)
    assert found[("quankey_backup_run_last_exit_code", labels)] == 3
    assert found[("quankey_backup_run_last_success_timestamp_seconds", labels)] == succeeded
    assert found[("quankey_backup_runs_total", labels)] == 2
    assert found[("quankey_backup_run_failures_total", labels)] == 1

    pruned = json.loads(run_cli(env, "prune", "--json", check=0).stdout)
    found = _samples(textfile / ("quankey_backup_prune_%s.prom" % source))
    prune_labels = 'command="prune",host="db1",database="%s"' % source
    assert found[("quankey_backup_run_last_exit_code", prune_labels)] == 0
    assert found[("quankey_backup_run_last_items", prune_labels + ',kind="kept"')] == len(pruned["kept"]) == 1
    assert not [name for name in os.listdir(str(textfile)) if name.startswith(".")]  # no temporary file left


def test_a_killed_backup_shows_a_start_after_its_end_and_the_health_check_calls_it_lost(testbed, env, source, tmp_path):
    textfile = tmp_path / "textfile"
    run_cli(env, "backup", check=0)
    # a migration holds a table's lock: pg_dump waits (BACKUP_LOCK_WAIT_TIMEOUT), and is killed while it does
    locker = subprocess.Popen(
        [str(testbed.pg.bindir / "psql"), "-X", "-v", "ON_ERROR_STOP=1", "--dbname", source, "-c",
         "BEGIN; LOCK TABLE customers IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(60);"],
        env=dict(os.environ, **testbed.pg.env()), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    full_env = dict(os.environ, LC_ALL="C.UTF-8", BACKUP_LOCK_WAIT_TIMEOUT="60", **env)
    backup = subprocess.Popen([CLI, "-q", "backup"], env=full_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state_file = textfile / ("quankey_backup_backup_%s.json" % source)
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            state = json.loads(state_file.read_text())
            if state["state"] == "running" and state["pid"] == backup.pid:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the backup never recorded its start")
        assert _monitor().read_runs(str(textfile))[0]["lost"] is False  # alive: not lost
        time.sleep(0.5)  # into pg_dump's wait
        os.kill(backup.pid, signal.SIGKILL)
        backup.wait()
    finally:
        if backup.poll() is None:
            backup.kill()
            backup.wait()
        locker.kill()
        locker.wait()
        # The server side outlives both clients: the locker's backend sleeps on in its transaction, holding the lock,
        # and the killed backup's pg_dump waits for it (it was not killed with its parent). End them, so the next
        # tests on this server do not wait up to a minute for the lock.
        testbed.pg.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '%s' "
                        "AND pid <> pg_backend_pid()" % source)
    labels = 'command="backup",host="db1",database="%s"' % source
    found = _samples(textfile / ("quankey_backup_backup_%s.prom" % source))
    assert (found[("quankey_backup_run_last_start_timestamp_seconds", labels)]
            > found[("quankey_backup_run_last_end_timestamp_seconds", labels)])
    assert found[("quankey_backup_run_last_exit_code", labels)] == 0  # the last run that ended
    runs = _monitor().read_runs(str(textfile))
    assert [(run["command"], run["lost"]) for run in runs] == [("backup", True)]
    assert 'quankey_backup_run_lost{%s} 1' % labels in _monitor().render_runs(runs).splitlines()


def _get_json(url):
    with urllib.request.urlopen(url, timeout=5) as response:  # nosec: loopback test servers
        return json.loads(response.read().decode("utf-8"))


def _wait_http(url, process, what, seconds=20):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if process.poll() is not None:
            pytest.fail("%s exited with %s" % (what, process.returncode))
        try:
            with urllib.request.urlopen(url, timeout=2):  # nosec: loopback test servers
                return
        except OSError:
            time.sleep(0.1)
    pytest.fail("%s did not answer at %s" % (what, url))


@pytest.mark.skipif(not (NODE_EXPORTER and PROMETHEUS),
                    reason="prometheus-node-exporter and prometheus are not installed here (apt-get install "
                           "prometheus prometheus-node-exporter; .ci/run installs them)")
def test_prometheus_scraping_node_exporter_fires_the_kits_alerts(tmp_path):
    textfile = tmp_path / "textfile"
    textfile.mkdir()
    now = time.time()
    monitor = _monitor()

    def report(database, hours_old):
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - hours_old * 3600))
        return {"host": "db1", "database": database, "status": "ok", "exit_code": 0, "check_up": True, "backups": 3,
                "findings": [], "latest": {"timestamp": stamp, "size_bytes": 2048}}
    # what the health check writes (its render_metrics), and a run's own record beside it: one directory, as deployed
    (textfile / "quankey_backup.prom").write_text(
        monitor.render_metrics([report("stale", 40), report("fresh", 2)], now, "db1"))
    record = runrecord.start(str(textfile), "backup", "db1", "stale")
    record.ended(5, None, error="the bucket refused the upload")
    exporter_port, prometheus_port = free_port(), free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text("global: {scrape_interval: 1s, evaluation_interval: 1s}\nrule_files: [%s]\n"
                      "scrape_configs:\n  - job_name: node\n    static_configs: [{targets: ['127.0.0.1:%d']}]\n"
                      % (json.dumps(str(RULES)), exporter_port))
    with open(str(tmp_path / "node_exporter.log"), "w") as exporter_log, \
            open(str(tmp_path / "prometheus.log"), "w") as prometheus_log:
        exporter = subprocess.Popen([NODE_EXPORTER, "--web.listen-address=127.0.0.1:%d" % exporter_port,
                                     "--collector.disable-defaults", "--collector.textfile",
                                     "--collector.textfile.directory=%s" % textfile],
                                    stdout=subprocess.DEVNULL, stderr=exporter_log)
        prometheus = subprocess.Popen([PROMETHEUS, "--config.file=%s" % config,
                                       "--storage.tsdb.path=%s" % (tmp_path / "tsdb"),
                                       "--web.listen-address=127.0.0.1:%d" % prometheus_port],
                                      stdout=subprocess.DEVNULL, stderr=prometheus_log)
        _check_alerts(tmp_path, exporter, exporter_port, prometheus, prometheus_port)


def _check_alerts(tmp_path, exporter, exporter_port, prometheus, prometheus_port):
    """node_exporter serves both files; Prometheus fires the alerts; both are stopped at the end."""
    try:
        metrics_url = "http://127.0.0.1:%d/metrics" % exporter_port
        _wait_http(metrics_url, exporter, "node_exporter")
        with urllib.request.urlopen(metrics_url, timeout=5) as response:  # nosec: loopback test server
            exposed = response.read().decode("utf-8")
        # node_exporter read both files (a clash of HELP or TYPE between them would drop them and say so here)
        assert 'node_textfile_scrape_error 0' in exposed
        assert 'quankey_backup_age_seconds{database="stale",host="db1"}' in exposed
        assert 'quankey_backup_run_last_exit_code{command="backup",database="stale",host="db1"} 5' in exposed
        base = "http://127.0.0.1:%d/api/v1/" % prometheus_port
        _wait_http(base + "status/buildinfo", prometheus, "prometheus")
        firing, deadline = {}, time.time() + 30
        while time.time() < deadline and not {"QuankeyBackupTooOld", "QuankeyBackupRunFailed"} <= set(firing):
            time.sleep(0.5)
            firing = dict((alert["labels"]["alertname"], alert) for alert in _get_json(base + "alerts")["data"]["alerts"]
                          if alert["state"] == "firing")
        assert {"QuankeyBackupTooOld", "QuankeyBackupRunFailed"} <= set(firing), (
            firing, (tmp_path / "prometheus.log").read_text()[-2000:])
        too_old = [alert for alert in _get_json(base + "alerts")["data"]["alerts"]
                   if alert["labels"]["alertname"] == "QuankeyBackupTooOld"]
        assert [(alert["labels"]["database"], alert["labels"]["severity"]) for alert in too_old] == [("stale", "critical")]
        assert too_old[0]["annotations"]["runbook_url"].endswith("docs/MONITORING.md#quankeybackuptooold")
        assert firing["QuankeyBackupRunFailed"]["labels"]["command"] == "backup"
    finally:
        for process in (prometheus, exporter):
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
