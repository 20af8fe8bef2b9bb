#!/usr/bin/env python
"""The services the Molecule test hosts back up to, kept running between Molecule's steps.

    services.py start --state FILE --host NAME[=DB,DB...] ...   start in the background, write FILE (JSON)
    services.py stop --state FILE                               stop them (SIGTERM, then SIGKILL)

What runs, on loopback (chroot test hosts share this machine's network):
- a PostgreSQL cluster (tests/testbed.py) with each host's databases, filled with tests/sampledb.py;
- moto_server as the S3 endpoint, enforcing IAM: its first requests (INITIAL_NO_AUTH_ACTION_COUNT)
  create the bucket, an admin user (Action "*") and one IAM user with an access key per test host,
  holding no policy yet: the tests attach exactly the policy the pg_backup role rendered on that host.

FILE holds what the inventory and the tests need (ports, passwords, keys); it is mode 0600. Beside it,
restore-identity.key: the restore side's hybrid-pq private key (mode 0600) for the host in recipient mode.
"""

import argparse
import base64
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

BUCKET = "quankey-backups-molecule"
ADMIN_POLICY = json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]})


def _requests_before_enforcement(host_count):
    """How many requests moto lets through without IAM: exactly the set-up below."""
    return 1 + 3 + 2 * host_count  # bucket; admin user, its policy, its key; per host a user and its key


def _parse_hosts(specs):
    hosts = {}
    for spec in specs:
        name, _separator, dbs = spec.partition("=")
        hosts[name] = [db for db in dbs.split(",") if db] or ["app_%s" % name.replace("-", "_")]
    return hosts


def _write_private(path, data):
    tmp = Path(str(path) + ".tmp")
    descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
    os.replace(tmp, path)


def serve(state_path, hosts):
    """Start everything, write the state file, and wait for SIGTERM (then stop everything)."""
    import testbed  # pylint: disable=import-outside-toplevel
    import sampledb  # pylint: disable=import-outside-toplevel
    from botocore.exceptions import ClientError  # pylint: disable=import-outside-toplevel

    def stop(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    pg = testbed.PostgresCluster()
    moto = testbed.MotoServer(initial_no_auth_action_count=_requests_before_enforcement(len(hosts)))
    with pg, moto:
        for databases in hosts.values():
            for db in databases:
                pg.create_database(db)
                sampledb.fill(pg, db, rows=2000, blobs=20)
        # the free requests: exactly _requests_before_enforcement(len(hosts)) of them
        moto.create_bucket(BUCKET)
        iam = moto.client("iam")
        iam.create_user(UserName="molecule-admin")
        iam.put_user_policy(UserName="molecule-admin", PolicyName="admin", PolicyDocument=ADMIN_POLICY)
        admin_key = iam.create_access_key(UserName="molecule-admin")["AccessKey"]
        state_hosts = {}
        for name, databases in hosts.items():
            user = "quankey-backup-%s" % name
            iam.create_user(UserName=user)
            key = iam.create_access_key(UserName=user)["AccessKey"]
            state_hosts[name] = {"iam_user": user, "access_key": key["AccessKeyId"], "secret_key": key["SecretAccessKey"],
                                 "databases": databases}
        # from here on every request is checked: a user without a policy must be refused
        probe = _client(moto, state_hosts[next(iter(hosts))])
        try:
            probe.list_objects_v2(Bucket=BUCKET, MaxKeys=1)
        except ClientError as error:
            if error.response["Error"]["Code"] != "AccessDenied":
                raise
        else:
            raise SystemExit("services: moto_server does not enforce IAM after the set-up requests")
        state = {
            "pid": os.getpid(),
            "postgres": {"host": pg.host, "port": pg.port, "user": pg.user, "password": pg.password,
                         "bindir": str(pg.bindir), "version": pg.version},
            "s3": {"endpoint_url": moto.endpoint_url, "bucket": BUCKET, "region": moto.region,
                   "admin_access_key": admin_key["AccessKeyId"], "admin_secret_key": admin_key["SecretAccessKey"]},
            "encryption_key": base64.b64encode(os.urandom(32)).decode("ascii"),
            "hybrid": _restore_side_keys(Path(state_path).parent),
            "hosts": state_hosts,
        }
        _write_private(state_path, state)
        print("services: ready: PostgreSQL %s on port %d, S3 at %s" % (pg.version, pg.port, moto.endpoint_url), flush=True)
        while True:
            signal.pause()


def _restore_side_keys(directory):
    """A hybrid-pq key pair as an operator makes it on the restore side (`quankey-backup keygen`), and a signing key.

    The private key stays on this machine (the controller); hosts in recipient mode get the public key only.
    """
    path = directory / "restore-identity.key"
    if path.exists():
        path.unlink()
    made = subprocess.run([str(Path(sys.executable).parent / "quankey-backup"), "keygen", "--output", str(path), "--json"],
                          stdout=subprocess.PIPE, check=True, universal_newlines=True)
    keypair = json.loads(made.stdout)
    return {"identity_file": str(path), "public_key": keypair["public_key"], "recipient_id": keypair["recipient_id"],
            "signing_key": base64.b64encode(os.urandom(32)).decode("ascii")}


def _client(moto, host):
    import boto3  # pylint: disable=import-outside-toplevel
    from botocore.config import Config  # pylint: disable=import-outside-toplevel
    return boto3.client("s3", endpoint_url=moto.endpoint_url, region_name=moto.region,
                        aws_access_key_id=host["access_key"], aws_secret_access_key=host["secret_key"],
                        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))


def _alive(pid):
    """Whether pid runs (a zombie, dead but not yet reaped by its new parent, does not)."""
    try:
        with open("/proc/%d/stat" % pid, encoding="utf-8") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def start(state_path, host_specs, timeout=120.0):
    """Start serve() in its own session, wait until the state file says it is ready."""
    state_path = Path(state_path).resolve()
    if state_path.exists():
        stop(state_path)
    state_path.parent.mkdir(parents=True, exist_ok=True)
    log_path = state_path.with_suffix(".log")
    command = [sys.executable, str(Path(__file__).resolve()), "serve", "--state", str(state_path)]
    for spec in host_specs:
        command += ["--host", spec]
    with open(log_path, "wb") as log:
        child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,  # pylint: disable=consider-using-with
                                 start_new_session=True, cwd=str(ROOT))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if state_path.exists():
            print("services: started (pid %d, log %s)" % (child.pid, log_path))
            return 0
        if child.poll() is not None:
            break
        time.sleep(0.2)
    if child.poll() is None:
        os.killpg(child.pid, signal.SIGKILL)
    sys.stderr.write("services: did not start:\n%s\n" % log_path.read_text(encoding="utf-8", errors="replace")[-4000:])
    return 1


def stop(state_path, timeout=30.0):
    """Stop the services of a state file (no-op when there are none)."""
    state_path = Path(state_path)
    if not state_path.exists():
        return 0
    pid = json.loads(state_path.read_text(encoding="utf-8"))["pid"]
    for signum in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, signum)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not _alive(pid):
            break
    state_path.unlink()
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("start", "stop", "serve"))
    parser.add_argument("--state", required=True, help="the state file (JSON, mode 0600)")
    parser.add_argument("--host", action="append", default=[], help="NAME or NAME=DB,DB (default database app_NAME)")
    args = parser.parse_args(argv)
    if args.action == "start":
        return start(args.state, args.host)
    if args.action == "stop":
        return stop(args.state)
    serve(args.state, _parse_hosts(args.host))
    return 0


if __name__ == "__main__":
    sys.exit(main())
