"""Run one command and measure it: wall time, CPU (client tree, PostgreSQL server, S3 server), peak RSS.

Also the CPU the whole machine spent meanwhile on anything else (``other_cpu_s``, from /proc/stat),
so a run disturbed by foreign load can be seen as such.

- Client CPU: the rusage that ``wait4`` returns for the command, which includes every descendant
  that was waited for (shells, pg_dump, pg_restore, openssl, aws, ...).
- Server CPU: from /proc, the postmaster and all its live descendants (utime + stime) plus the
  postmaster's cutime + cstime (backends it has reaped), before and after; the difference is
  what the server spent during the run, whichever backends came and went. The same for the
  S3 endpoint (moto_server, and the TLS shim in front of it when there is one).
- Peak RSS: the command's process tree is walked from /proc every SAMPLE_SECONDS
  (``/proc/PID/task/TID/children``); at each sample the RSS of every process in it is summed.
  RSS counts shared pages (libraries) once per process, so the sum is an upper bound.
  The largest single process (and its name) is recorded as well.
"""

import os
import resource
import signal
import subprocess
import threading
import time

SAMPLE_SECONDS = 0.05
TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def _stat_fields(pid):
    """Fields of /proc/PID/stat after the command name (index 0 = state), or None."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    return data[data.rindex(b")") + 2:].split()


def _children(pid):
    kids = []
    try:
        tasks = os.listdir("/proc/%d/task" % pid)
    except OSError:
        return kids
    for tid in tasks:
        try:
            with open("/proc/%d/task/%s/children" % (pid, tid), "rb") as handle:
                kids.extend(int(kid) for kid in handle.read().split())
        except OSError:
            pass
    return kids


def tree(pid):
    """``pid`` and its live descendants."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(_children(current))
    return found


def comm(pid):
    try:
        with open("/proc/%d/comm" % pid, encoding="utf-8", errors="replace") as handle:
            return handle.read().strip()
    except OSError:
        return "?"


def rss_bytes(pid):
    try:
        with open("/proc/%d/statm" % pid, "rb") as handle:
            return int(handle.read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def tree_cpu_seconds(pid):
    """CPU seconds spent so far by ``pid``'s live tree plus what ``pid`` has reaped (0.0 when gone)."""
    total = 0
    for index, member in enumerate(tree(pid)):
        fields = _stat_fields(member)
        if fields is None:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
        if index == 0:
            total += int(fields[13]) + int(fields[14])  # cutime, cstime of reaped children
    return total / TICKS


def boost(pid, nice):
    """Give ``pid``'s session (its scheduler autogroup) the niceness ``nice``; True if it worked.

    With kernel.sched_autogroup_enabled (Debian's default) CPU is shared between sessions first,
    whatever the processes' own niceness: a service started in its own session (PostgreSQL, moto)
    needs its autogroup's niceness set to be favoured over other users' jobs.
    """
    try:
        with open("/proc/%d/autogroup" % pid, "w", encoding="ascii") as handle:
            handle.write(str(nice))
        return True
    except OSError:
        return False


def machine_busy_seconds():
    """CPU seconds all cores have spent not idle since boot (/proc/stat), to see foreign load during a run."""
    with open("/proc/stat", "rb") as handle:
        fields = [int(value) for value in handle.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / TICKS


class CpuMeter:
    """CPU time of a set of long-running server processes (by root pid), between start() and stop()."""

    def __init__(self, pids):
        self.pids = [pid for pid in pids if pid]
        self._start = None

    def start(self):
        self._start = sum(tree_cpu_seconds(pid) for pid in self.pids)

    def stop(self):
        return sum(tree_cpu_seconds(pid) for pid in self.pids) - self._start


class Result(dict):
    """wall_s, client_cpu_s, server_cpu_s, s3_cpu_s, peak_rss_bytes, peak_proc_rss_bytes, peak_proc, status, output."""


def run(argv, env=None, cwd=None, servers=None, s3_servers=None, stdout_path=None, shell=False, check=True,
        preexec_fn=None, nice=None):
    """Run ``argv`` to completion, sampling its tree; returns a Result. Raises RuntimeError if it fails and ``check``."""
    server = CpuMeter(servers or [])
    s3 = CpuMeter(s3_servers or [])
    out = open(stdout_path, "wb") if stdout_path else subprocess.PIPE  # pylint: disable=consider-using-with
    err_path = "/tmp/bench-stderr-%d.log" % os.getpid()
    err = open(err_path, "wb")  # pylint: disable=consider-using-with
    server.start()
    s3.start()
    busy = machine_busy_seconds()
    started = time.monotonic()
    if shell:
        argv = ["bash", "-c", argv]
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL,  # pylint: disable=consider-using-with
                            stdout=out if stdout_path else subprocess.DEVNULL, stderr=err, preexec_fn=preexec_fn,
                            process_group=0)  # its own group (killed whole if we are interrupted), our session
    peak = {"tree": 0, "proc": 0, "name": ""}
    seen = {}  # process name -> [first, last] seconds it was seen running, from the start
    finished = threading.Event()

    boosted = set()

    def boost_servers():
        # PostgreSQL backends call setsid(): each is its own scheduler autogroup, which the server's
        # niceness does not reach; give every new one the bench's niceness as soon as it is seen
        for root in servers or []:
            for member in tree(root):
                if member not in boosted:
                    boosted.add(member)
                    boost(member, nice)

    def sample():
        while not finished.is_set():
            if nice:
                boost_servers()
            total = 0
            now = time.monotonic() - started
            for member in tree(proc.pid):
                size = rss_bytes(member)
                total += size
                name = comm(member)
                seen.setdefault(name, [now, now])[1] = now
                if size > peak["proc"]:
                    peak["proc"], peak["name"] = size, comm(member)
            peak["tree"] = max(peak["tree"], total)
            finished.wait(SAMPLE_SECONDS)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        _pid, status, usage = os.wait4(proc.pid, 0)
    except BaseException:
        finished.set()
        try:
            os.killpg(proc.pid, signal.SIGKILL)
            os.waitpid(proc.pid, 0)
        except OSError:
            pass
        raise
    wall = time.monotonic() - started
    busy = machine_busy_seconds() - busy
    finished.set()
    sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    server_cpu = server.stop()
    s3_cpu = s3.stop()
    if stdout_path:
        out.close()
    err.close()
    with open(err_path, "rb") as handle:
        stderr = handle.read().decode("utf-8", "replace")
    os.unlink(err_path)
    result = Result(wall_s=wall, client_cpu_s=usage.ru_utime + usage.ru_stime, server_cpu_s=server_cpu, s3_cpu_s=s3_cpu,
                    peak_rss_bytes=peak["tree"], peak_proc_rss_bytes=peak["proc"], peak_proc=peak["name"],
                    status=proc.returncode, stderr=stderr[-4000:])
    result["seen"] = {name: [round(first, 2), round(last, 2)] for name, (first, last) in seen.items()}
    # CPU the machine spent on anything else meanwhile (other users' jobs; also this sampler)
    result["other_cpu_s"] = max(0.0, busy - result["client_cpu_s"] - server_cpu - s3_cpu)
    if check and proc.returncode != 0:
        shown = argv if isinstance(argv, str) else " ".join(str(a) for a in argv)
        raise RuntimeError("command failed with %d: %s\n%s" % (proc.returncode, shown[:500], stderr[-3000:]))
    return result


def self_cpu_seconds():
    """CPU seconds of this process so far (the sampler's cost, reported once)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
