# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Issue 14 item 5 on the real test bed: an env file's process variables reach boto3, in the host command and in the
modules (their env_file), and the process environment wins over the file.

The proof is a proxy: with HTTP_PROXY in the env file, the S3 requests to the test bed's http:// endpoint go through
it (a small recording forward proxy here), or fail naming it when nothing listens there; with NO_PROXY naming the
endpoint's host they go straight to it again. Nothing of the proxy comes from this process: each run gets only what
the env file says (and PATH, HOME, a locale)."""

import http.client
import http.server
import json
import os
import subprocess
import sys
import threading
import uuid
from urllib.parse import urlsplit
from pathlib import Path

import pytest

from hostcommand import new_name, run_cli, run_module
from testbed import free_port, write_env_file

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PROXY_NAMES = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY")
_HOP_BY_HOP = ("connection", "keep-alive", "proxy-connection", "proxy-authorization", "te", "trailer",
               "transfer-encoding", "upgrade")


class _Forwarder(http.server.BaseHTTPRequestHandler):
    """A plain-HTTP forward proxy: takes absolute-form requests (GET http://host:port/path), records them, sends them
    on and returns the answer."""

    protocol_version = "HTTP/1.1"

    def _forward(self):
        self.server.seen.append("%s %s" % (self.command, self.path))
        target = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = dict((name, value) for name, value in self.headers.items() if name.lower() not in _HOP_BY_HOP)
        upstream = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
        try:
            upstream.request(self.command, target.path + ("?" + target.query if target.query else ""), body, headers)
            answer = upstream.getresponse()
            data = answer.read()
        finally:
            upstream.close()
        self.send_response(answer.status, answer.reason)
        for name, value in answer.getheaders():
            if name.lower() not in _HOP_BY_HOP + ("content-length",):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward

    def log_message(self, *args):  # pylint: disable=arguments-differ  # quiet: the test reads ``seen``
        pass


@pytest.fixture
def proxy():
    """A recording forward proxy on a loopback port: ``url`` and ``seen`` (the request lines it forwarded)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Forwarder)
    server.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield {"url": "http://127.0.0.1:%d" % server.server_address[1], "seen": server.seen}
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def settings(testbed):
    """The settings of an env file for a host with no backups yet in the test bed's bucket (``list`` reads it there),
    without retries, so that a request that cannot be sent fails at once."""
    env = dict(testbed.backup_env(new_name("envx")), S3_PREFIX=new_name("envx"), BACKUP_HOST_ID="envx1",
               S3_RETRY_WINDOW_SECONDS="0")
    return env


def _closed_port_url():
    return "http://127.0.0.1:%d" % free_port()  # nothing listens there


def _list(tmp_path, file_values, process=None):
    """``quankey-backup --env-file <file> list --json`` with the file holding ``file_values`` and the process only
    ``process`` (with PATH, HOME and a locale)."""
    path = str(tmp_path / ("%s.env" % uuid.uuid4().hex[:8]))
    write_env_file(path, file_values)
    return path, run_cli(dict(process or {}), "--env-file", path, "list", "--json")


def test_a_proxy_in_the_env_file_carries_the_s3_requests(tmp_path, settings, proxy):
    path, proc = _list(tmp_path, dict(settings, HTTP_PROXY=proxy["url"]))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["backups"] == []
    endpoint = settings["S3_ENDPOINT_URL"]
    assert [line for line in proxy["seen"] if line.startswith("GET %s/%s" % (endpoint, settings["S3_BUCKET"]))], proxy
    assert "WARNING" not in proc.stderr and path not in proc.stderr  # every line of the file is used


def test_a_proxy_that_is_not_there_fails_the_command_naming_it_and_no_proxy_bypasses_it(tmp_path, settings):
    closed = _closed_port_url()
    _path, proc = _list(tmp_path, dict(settings, HTTP_PROXY=closed))
    assert proc.returncode == 5, proc.stderr
    assert 'Failed to connect to proxy URL: "%s"' % closed in proc.stderr
    _path, proc = _list(tmp_path, dict(settings, HTTP_PROXY=closed, NO_PROXY="127.0.0.1"))
    assert proc.returncode == 0, proc.stderr


def test_the_process_environment_wins_over_the_env_file(tmp_path, settings, proxy):
    closed = _closed_port_url()
    _path, proc = _list(tmp_path, dict(settings, HTTP_PROXY=closed), process={"HTTP_PROXY": proxy["url"]})
    assert proc.returncode == 0, proc.stderr
    assert proxy["seen"], "the process environment's proxy was not used"
    # the lower-case form in the environment also beats the file's upper-case one
    seen = len(proxy["seen"])
    _path, proc = _list(tmp_path, dict(settings, HTTP_PROXY=closed), process={"http_proxy": proxy["url"]})
    assert proc.returncode == 0, proc.stderr
    assert len(proxy["seen"]) > seen


def test_a_variable_the_engine_does_not_read_is_warned_of_once_by_name(tmp_path, settings):
    path, proc = _list(tmp_path, dict(settings, BLAH="value-never-shown", SSL_CERT_FILE="/etc/ssl/ca.pem"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("BLAH in %s is not a variable quankey-backup reads: it has no effect" % path) == 1
    assert "SSL_CERT_FILE in %s is not a variable quankey-backup reads: it has no effect (boto3 does not read it: use " \
           "AWS_CA_BUNDLE)" % path in proc.stderr
    assert "value-never-shown" not in proc.stderr


def _module(tmp_path, env_file):
    """``ansible localhost -m quankey.backup.backup_info -a 'env_file=<file> all=true'``, the module's process holding
    no proxy, AWS, S3 or backup variable of this one."""
    return run_module(tmp_path, "ansible", "localhost", "-e", "ansible_python_interpreter=%s" % sys.executable,
                      "-m", "quankey.backup.backup_info", "-a", "env_file=%s all=true" % env_file, drop=PROXY_NAMES)


def test_a_modules_env_file_gives_boto3_its_proxy_too(tmp_path, settings, proxy):
    path = str(tmp_path / "module.env")
    write_env_file(path, dict(settings, HTTP_PROXY=proxy["url"], BLAH="value-never-shown"))
    result = _module(tmp_path, path)
    assert not result.get("failed"), result
    assert [line for line in proxy["seen"] if line.startswith("GET %s/" % settings["S3_ENDPOINT_URL"])], proxy
    assert ["BLAH in %s is not a variable quankey-backup reads: it has no effect (remove it; docs/CLI.md says which "
            "variables an env file may set)" % path] == result.get("warnings"), result
    write_env_file(path, dict(settings, HTTP_PROXY=_closed_port_url()))
    result = _module(tmp_path, path)
    assert result.get("failed") and "Failed to connect to proxy URL" in result["msg"], result


# -- the pg_backup role refuses an entry of pg_backup_env_extra the engine would not use, before installing anything

_PREFLIGHT_PLAY = """
- hosts: localhost
  gather_facts: false
  tasks:
    - ansible.builtin.include_role:
        name: quankey.backup.pg_backup
        tasks_from: preflight
"""
_ROLE_VARS = {"pg_backup_seed_takeover": False, "pg_backup_databases": ["quankey_prod"],
              "pg_backup_s3_bucket": "quankey-backups", "pg_backup_host_id": "db1",
              "pg_backup_encryption_key": "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="}
_CHECK_TASK = "TASK [quankey.backup.pg_backup : Check pg_backup_env_extra with the engine's own lists (on the controller)]"


def _preflight(tmp_path, env_extra):
    """The pg_backup role's preflight on this machine (local connection) with ``env_extra``; its output after the
    task that checks pg_backup_env_extra."""
    collections = tmp_path / "collections" / "ansible_collections" / "quankey"
    collections.mkdir(parents=True)
    (collections / "backup").symlink_to(ROOT)
    (tmp_path / "play.yml").write_text(_PREFLIGHT_PLAY)
    (tmp_path / "vars.json").write_text(json.dumps(dict(_ROLE_VARS, pg_backup_env_extra=env_extra,
                                                        ansible_python_interpreter=sys.executable)))
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(tmp_path / "collections"), ANSIBLE_HOME=str(tmp_path / "home"),
               ANSIBLE_LOCAL_TEMP=str(tmp_path / "tmp"), ANSIBLE_NOCOLOR="1", ANSIBLE_RETRY_FILES_ENABLED="false")
    proc = subprocess.run([str(BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local", str(tmp_path / "play.yml"),
                           "-e", "@%s" % (tmp_path / "vars.json")], env=env, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, timeout=300,
                          check=False)
    assert _CHECK_TASK in proc.stdout, proc.stdout
    return proc.returncode, proc.stdout.split(_CHECK_TASK, 1)[1]


def test_the_role_refuses_an_env_extra_entry_the_engine_would_not_use_naming_it_and_not_its_value(tmp_path):
    status, out = _preflight(tmp_path, {"BLAH": "value-never-shown", "SSL_CERT_FILE": "/ca.pem", "DB_HOST": "elsewhere",
                                        "HTTPS_PROXY": "http://proxy.internal:3128"})
    assert status == 2 and "fatal: [localhost]: FAILED!" in out, out
    assert "pg_backup_env_extra: BLAH is not a variable quankey-backup reads, so it would have no effect; DB_HOST is " \
           "written by the role itself: set pg_backup_db_host instead; SSL_CERT_FILE is not a variable quankey-backup " \
           "reads, so it would have no effect (boto3 does not read it: use AWS_CA_BUNDLE). Accepted are the settings " \
           "of docs/CLI.md" in out
    assert "value-never-shown" not in out and "elsewhere" not in out and "HTTPS_PROXY is" not in out


def test_the_role_takes_env_extra_entries_the_engine_uses(tmp_path):
    _status, out = _preflight(tmp_path, {"HTTPS_PROXY": "http://proxy.internal:3128", "NO_PROXY": "169.254.169.254",
                                         "REQUESTS_CA_BUNDLE": "/etc/ssl/s3-ca.pem", "AWS_MAX_ATTEMPTS": 10,
                                         "PGSSLROOTCERT": "/etc/quankey/root.crt",
                                         "AWS_SESSION_TOKEN": "to ken"})
    assert out.split("\n\n", 1)[0].strip().endswith("ok: [localhost]"), out
