"""Starting MXNet parameter-server jobs: a scheduler, servers and workers with the DMLC environment.

MXNet's distributed kvstores (``dist_sync``, ``dist_device_sync``, ``dist_async``) run on ps-lite:
a scheduler process introduces the others, server processes hold the parameters (and, with
``dist_async``, run the optimizer), worker processes train. All of them run the same command and
learn their role from the environment:

===================== ===================================================================
``DMLC_ROLE``         ``scheduler``, ``server`` or ``worker``
``DMLC_PS_ROOT_URI``  IP address of the scheduler
``DMLC_PS_ROOT_PORT`` port the scheduler listens on
``DMLC_NUM_SERVER``   number of servers
``DMLC_NUM_WORKER``   number of workers
``DMLC_NODE_HOST``    IP address this process listens on and announces to the others
===================== ===================================================================

``import mxnet`` turns a scheduler or server process into its role's loop, which exits the
process when the workers are done, so the command must import mxnet before it does anything only
a worker should do. A worker learns its rank (0 .. workers-1) from the scheduler, through
``mx.kv.create('dist_sync').rank``; the launcher's numbering of the workers is not that rank.

:func:`launch` (the CLI is ``tools/launch.py``) plans the processes with :func:`plan_local` (all
on 127.0.0.1) or :func:`plan_ssh` (over the hosts of a hostfile) and runs them with :func:`run`,
which forwards SIGINT, SIGTERM and SIGHUP to them, stops all of them as soon as one fails, and
returns non-zero if any failed. Every process is started in a process group of its own, and every
group is killed at the end, so nothing the command started outlives the launcher.
"""
import argparse
import ctypes
import dataclasses
import ipaddress
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

__all__ = ["Process", "LaunchError", "plan_local", "plan_ssh", "read_hostfile", "free_port", "run", "launch",
           "main", "LAUNCHERS", "LOCALHOST", "DEFAULT_SSH_PORT"]

LAUNCHERS = ("local", "ssh")
LOCALHOST = "127.0.0.1"
# Scheduler port of --launcher ssh: a free port cannot be picked on another machine from here.
DEFAULT_SSH_PORT = 9091
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# How often the launcher looks at its processes: exits are noticed within this, at no measurable cost.
POLL_S = 0.05
PREFIX = "launch: "


class LaunchError(ValueError):
    """Launcher arguments that cannot work; the message says which and why."""


@dataclasses.dataclass
class Process:
    """One process of a job.

    Attributes:
        role: ``'scheduler'``, ``'server'`` or ``'worker'``.
        index: number within the role (0-based; not the kvstore rank).
        host: where it runs.
        argv: what the launcher executes (the command itself, or ``ssh`` with the remote command).
        env: variables added to the launcher's environment (local processes; an ssh process
            carries its variables inside the remote command).
    """
    role: str
    index: int
    host: str
    argv: list
    env: dict

    @property
    def name(self):
        return "scheduler" if self.role == "scheduler" else f"{self.role} {self.index}"

    def shell(self):
        """The process as one shell line (for --dry-run and messages)."""
        assignments = [f"{k}={shlex.quote(v)}" for k, v in self.env.items()]
        return shlex.join(self.argv) if not assignments else " ".join(assignments + [shlex.join(self.argv)])


def free_port(host=LOCALHOST):
    """A TCP port free on ``host`` now, chosen by the OS.

    The port is released before the scheduler binds it, so another program may take it in
    between; the scheduler then fails to start, and :func:`run` reports that (nothing hangs).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _check_counts(num_workers, num_servers):
    for flag, value in (("-n/--num-workers", num_workers), ("-s/--num-servers", num_servers)):
        if not isinstance(value, int) or value < 1:
            raise LaunchError(f"{flag} must be at least 1, got {value!r}")


def _check_port(port):
    if port is not None and not 1 <= port <= 65535:
        raise LaunchError(f"--port must be in 1..65535, got {port}")


def _dmlc_env(role, root, port, num_servers, num_workers, node_host):
    env = {"DMLC_ROLE": role, "DMLC_PS_ROOT_URI": root, "DMLC_PS_ROOT_PORT": str(port),
           "DMLC_NUM_SERVER": str(num_servers), "DMLC_NUM_WORKER": str(num_workers)}
    if node_host:
        env["DMLC_NODE_HOST"] = node_host
    return env


def _roles(num_workers, num_servers):
    yield "scheduler", 0
    for i in range(num_servers):
        yield "server", i
    for i in range(num_workers):
        yield "worker", i


def plan_local(command, num_workers, num_servers, port=None, env=None):
    """Scheduler, servers and workers on this machine, all listening on 127.0.0.1 only.

    Args:
        command: argv list run by every process.
        num_workers, num_servers: counts (at least 1 each).
        port: scheduler port (default: a free one, :func:`free_port`).
        env: extra variables for every process.
    """
    _check_counts(num_workers, num_servers)
    _check_port(port)
    if not command:
        raise LaunchError("no command given: what should the processes run?")
    port = port or free_port()
    return [Process(role, i, LOCALHOST, list(command),
                    dict(env or {}, **_dmlc_env(role, LOCALHOST, port, num_servers, num_workers, LOCALHOST)))
            for role, i in _roles(num_workers, num_servers)]


def read_hostfile(path):
    """Hosts of a hostfile: one ``address`` or ``user@address`` per line; blank lines and ``#``
    comments are skipped. Raises :class:`LaunchError` for a missing or empty file."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise LaunchError(f"hostfile {path}: no such file") from None
    except OSError as err:
        raise LaunchError(f"hostfile {path}: cannot read it ({err.strerror})") from None
    hosts = []
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        if len(text.split()) != 1:
            raise LaunchError(f"hostfile {path}: line {number} has several fields ({line.strip()!r}); "
                              "write one host per line")
        hosts.append(text)
    if not hosts:
        raise LaunchError(f"hostfile {path}: lists no hosts (one address or user@address per line)")
    return hosts


def _address(host):
    return host.rpartition("@")[2]


def _is_ip(text):
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def plan_ssh(command, num_workers, num_servers, hosts, port=DEFAULT_SSH_PORT, env=None, cwd=None):
    """Processes over ``hosts``, each started with ``ssh HOST 'cd CWD && exec env VARS... COMMAND'``.

    The scheduler runs on the first host, servers and workers take the hosts in turn (server i and
    worker i on ``hosts[i % len(hosts)]``). The first host must be written as an IP address: ps-lite
    binds the scheduler to ``DMLC_PS_ROOT_URI``, and ZeroMQ binds to an address or interface, not a
    host name. Hosts
    given as IP addresses also become their processes' ``DMLC_NODE_HOST``; for the others ps-lite
    picks the machine's first non-loopback interface (choose one with ``DMLC_INTERFACE`` in
    ``env``).

    ssh runs with ``-tt``: with a terminal on the remote side, sshd hangs up (SIGHUP) the remote
    command when the local ssh ends, so stopping the launcher stops the remote processes too.
    ``BatchMode=yes`` makes ssh fail rather than prompt for a password (set up keys).

    Args:
        command: argv run on every host (the same paths must exist there, e.g. a shared filesystem).
        hosts: from :func:`read_hostfile`.
        port: scheduler port on the first host.
        env: extra variables for every process.
        cwd: directory the command runs in (default: the current one).
    """
    _check_counts(num_workers, num_servers)
    _check_port(port)
    if not command:
        raise LaunchError("no command given: what should the processes run?")
    if not hosts:
        raise LaunchError("no hosts to run on")
    root = _address(hosts[0])
    if not _is_ip(root):
        raise LaunchError(f"the first host ({hosts[0]}) runs the scheduler, which ps-lite binds to that address: "
                          "write it as an IP address in the hostfile")
    cwd = cwd or os.getcwd()
    port = port or DEFAULT_SSH_PORT
    processes = []
    for role, i in _roles(num_workers, num_servers):
        host = hosts[0] if role == "scheduler" else hosts[i % len(hosts)]
        address = _address(host)
        variables = dict(env or {}, **_dmlc_env(role, root, port, num_servers, num_workers,
                                                address if _is_ip(address) else None))
        remote = " ".join([f"cd {shlex.quote(cwd)} && exec env"] + [f"{k}={shlex.quote(v)}" for k, v in
                                                                       variables.items()] + [shlex.join(command)])
        processes.append(Process(role, i, host, ["ssh", "-tt", "-o", "BatchMode=yes", host, remote], {}))
    return processes


# ----------------------------------------------------------------------------- running

def _die_with_launcher():
    """Runs in each child before the command (a preexec_fn, safe because the launcher has no other
    threads): asks Linux to SIGKILL the child when the launcher dies, even of a SIGKILL, which the
    launcher cannot forward. Elsewhere there is no such request."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


def _signal_name(number):
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _describe(status):
    return f"was killed by {_signal_name(-status)}" if status < 0 else f"exited with status {status}"


def _exit_code(status):
    """Shell convention: a status, or 128 + the signal that killed the process."""
    return 128 - status if status < 0 else status


def _peek(pid):
    """The exit status of child ``pid`` (negative: killed by that signal), or None while it runs.

    WNOWAIT leaves the child a zombie: its pid, which is also its process group id, cannot be
    reused by another process until :meth:`_Job.cleanup` reaps it, so signalling the group stays
    safe after the leader has exited.
    """
    info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    if info is None:
        return None
    if info.si_code in (os.CLD_KILLED, os.CLD_DUMPED):
        return -info.si_status
    return info.si_status


class _Job:
    """The running processes of one launch."""

    def __init__(self, processes, grace, log):
        self.processes = processes
        self.grace = grace
        self.log = log
        self.popen = {}      # index in processes -> Popen
        self.status = {}     # index -> exit status, once exited
        self.signals = []    # signals received by the launcher, in order

    def say(self, message):
        print(PREFIX + message, file=self.log, flush=True)

    def start(self):
        for i, p in enumerate(self.processes):
            try:
                # A new session per process: a process group the launcher can signal and kill as
                # a whole (with everything the command starts), and no terminal SIGINT behind the
                # launcher's back.
                self.popen[i] = subprocess.Popen(p.argv, env={**os.environ, **p.env}, stdin=subprocess.DEVNULL,
                                                 start_new_session=True, preexec_fn=_die_with_launcher)
            except OSError as err:
                self.say(f"cannot start {p.name} ({shlex.join(p.argv[:1])}): {err.strerror}")
                return 127
        return None

    def live(self, roles=None):
        return [i for i in self.popen if i not in self.status and (roles is None or self.processes[i].role in roles)]

    def poll(self):
        """Records new exits; returns the index of a process that failed, or None."""
        failed = None
        for i in self.live():
            status = _peek(self.popen[i].pid)
            if status is not None:
                self.status[i] = status
                if status != 0 and failed is None:
                    failed = i
        return failed

    def kill(self, indices, sig):
        for i in indices:
            try:
                os.killpg(self.popen[i].pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def wait_until(self, done, seconds):
        """Polls until ``done()`` or ``seconds`` pass or another signal arrives; returns done()."""
        deadline = time.monotonic() + seconds
        seen = len(self.signals)
        while not done() and time.monotonic() < deadline and len(self.signals) == seen:
            time.sleep(POLL_S)
            self.poll()
        return done()

    def stop(self, sig=None):
        """Stops every process.

        With ``sig`` (a signal the launcher received) the workers get it first, and the grace
        period to exit: a training script may act on it (SIGINT raises KeyboardInterrupt), and a
        worker that exits says goodbye through the scheduler and servers, so they must still run.
        Then, and at once after a failure, whatever runs gets SIGTERM: ps-lite's scheduler and
        server loops run in C++, where Python's SIGINT handler never gets to run, but SIGTERM's
        default action ends them. SIGKILL follows after the grace period. Another signal to the
        launcher cuts a grace period short.
        """
        self.poll()
        if sig is not None:
            self.kill(self.live(("worker",)), sig)
            self.wait_until(lambda: not self.live(("worker",)), self.grace)
        self.kill(self.live(), signal.SIGTERM)
        if not self.wait_until(lambda: not self.live(), self.grace):
            left = self.live()
            self.say(f"{len(left)} process(es) still running after {self.grace:g} s "
                     f"({', '.join(self.processes[i].name for i in left)}); killing them")
        self.kill(self.live(), signal.SIGKILL)

    def cleanup(self):
        """SIGKILL to every process group, then reap: whatever a command started and left behind
        (data-loading processes, a shell's children) dies with it."""
        self.kill(list(self.popen), signal.SIGKILL)
        for popen in self.popen.values():
            popen.wait()

    def on_signal(self, number, frame):
        self.signals.append(number)

    def watch(self):
        """Waits for the job; returns the launcher's exit code."""
        while True:
            if self.signals:
                return self._forward()
            failed = self.poll()
            if failed is not None:
                p, status = self.processes[failed], self.status[failed]
                others = len(self.live())
                self.say(f"{p.name} (pid {self.popen[failed].pid}, {p.host}) {_describe(status)}; "
                         f"stopping the other {others} process(es)")
                self.stop()
                return _exit_code(status)
            if not self.live(("worker",)):
                break
            time.sleep(POLL_S)
        # Every worker finished with status 0; the servers and the scheduler exit once the workers
        # have said goodbye (every worker that created a dist kvstore does so at exit).
        if self.wait_until(lambda: not self.live(), self.grace):
            failed = [i for i in self.status if self.status[i] != 0]
            if failed:
                p = self.processes[failed[0]]
                self.say(f"{p.name} (pid {self.popen[failed[0]].pid}, {p.host}) {_describe(self.status[failed[0]])} "
                         "after the workers finished")
                return _exit_code(self.status[failed[0]])
            return 0
        if self.signals:
            return self._forward()
        left = ", ".join(self.processes[i].name for i in self.live())
        self.say(f"the workers finished but {left} did not exit within {self.grace:g} s (did every worker create "
                 "a dist kvstore?); stopping them")
        self.stop()
        return 0

    def _forward(self):
        number = self.signals[0]
        self.say(f"received {_signal_name(number)}; passing it on to the workers, then stopping the job")
        self.stop(number)
        return 128 + number


@contextmanager
def _forwarding(job):
    """Routes the forwarded signals to ``job`` while the launch runs (main thread only: Python
    delivers signals there, and other threads may not install handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, job.on_signal) for s in FORWARDED_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def run(processes, grace=10.0, log=None):
    """Runs ``processes`` (from :func:`plan_local` / :func:`plan_ssh`) until the job ends.

    Returns 0 when every process exited with status 0. When one fails, the others are stopped
    (SIGTERM, SIGKILL after ``grace`` seconds) and its status is returned (128 + N if signal N
    killed it). When the launcher receives SIGINT, SIGTERM or SIGHUP it passes it on (see
    :meth:`_Job.stop`) and returns 128 + its number. Messages go to ``log`` (default stderr).
    """
    job = _Job(processes, grace, log or sys.stderr)
    with _forwarding(job):
        try:
            code = job.start()
            if code is not None:
                job.stop()
                return code
            return job.watch()
        finally:
            job.cleanup()


def launch(command, num_workers, num_servers=None, launcher="local", hostfile=None, port=None, env=None,
           grace=10.0, dry_run=False, log=None):
    """Plans and runs a job: ``num_workers`` workers, ``num_servers`` servers (default: as many as
    workers) and a scheduler, all running ``command``. ``dry_run`` prints the plan instead.
    Returns the exit code (see :func:`run`)."""
    log = log or sys.stderr
    num_servers = num_workers if num_servers is None else num_servers
    if launcher not in LAUNCHERS:
        raise LaunchError(f"unknown launcher {launcher!r}; choose one of {LAUNCHERS}")
    if grace < 0:
        raise LaunchError(f"--grace must not be negative, got {grace}")
    _check_port(port)
    if launcher == "local":
        if hostfile:
            raise LaunchError("-H/--hostfile is for --launcher ssh; --launcher local runs everything on 127.0.0.1")
        port = port or free_port()
        processes = plan_local(command, num_workers, num_servers, port, env)
    else:
        if not hostfile:
            raise LaunchError("--launcher ssh needs -H/--hostfile HOSTFILE (one host per line)")
        port = port or DEFAULT_SSH_PORT
        processes = plan_ssh(command, num_workers, num_servers, read_hostfile(hostfile), port, env)
    if dry_run:
        for p in processes:
            print(f"{p.name:<10} {p.host:<16} {p.shell()}")
        return 0
    print(f"{PREFIX}scheduler on {processes[0].host} port {port}, {num_servers} server(s), {num_workers} "
          f"worker(s) ({launcher})", file=log, flush=True)
    return run(processes, grace, log)


def _env_option(text):
    name, equals, value = text.partition("=")
    if not name.isidentifier():
        raise argparse.ArgumentTypeError(f"expected NAME or NAME=VALUE, got {text!r}")
    if not equals:
        if name not in os.environ:
            raise argparse.ArgumentTypeError(f"{name} is not set here; give its value as {name}=VALUE")
        value = os.environ[name]
    return name, value


def build_parser():
    p = argparse.ArgumentParser(
        prog="launch.py", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Start an MXNet parameter-server job: a scheduler, SERVERS servers and WORKERS workers, all "
                    "running COMMAND with DMLC_ROLE, DMLC_PS_ROOT_URI, DMLC_PS_ROOT_PORT, DMLC_NUM_SERVER, "
                    "DMLC_NUM_WORKER and DMLC_NODE_HOST set. Exits with 0 when all processes succeed, otherwise "
                    "with the status of the first that failed (after stopping the others).",
        epilog="examples:\n"
               "  python tools/launch.py -n 2 -s 1 python example/train_imagenet.py --kv-store dist_sync ...\n"
               "  python tools/launch.py -n 4 -s 2 --launcher ssh -H hosts python example/train_imagenet.py ...\n"
               "see docs/distributed.md")
    p.add_argument("-n", "--num-workers", type=int, required=True, help="number of workers")
    p.add_argument("-s", "--num-servers", type=int, help="number of servers (default: as many as workers)")
    p.add_argument("--launcher", choices=LAUNCHERS, default="local",
                   help="local: every process on this machine, on 127.0.0.1 (default); ssh: over the hosts of -H")
    p.add_argument("-H", "--hostfile", help="--launcher ssh: one host (IP address or user@address) per line; the "
                   "first runs the scheduler")
    p.add_argument("--port", type=int, help=f"scheduler port (default: a free one for local, {DEFAULT_SSH_PORT} "
                   "for ssh)")
    p.add_argument("--env", type=_env_option, action="append", default=[], metavar="NAME[=VALUE]",
                   help="also set NAME in every process (its value here if no VALUE is given); repeatable")
    p.add_argument("--grace", type=float, default=10.0, metavar="SECONDS",
                   help="seconds stopped processes get before SIGKILL (default 10)")
    p.add_argument("--dry-run", action="store_true", help="print every process's host and command, start nothing")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND...", help="what every process runs")
    return p


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    try:
        return launch(command, args.num_workers, args.num_servers, args.launcher, args.hostfile, args.port,
                      dict(args.env), args.grace, args.dry_run)
    except LaunchError as err:
        parser.error(str(err))
