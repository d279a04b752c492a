#!/usr/bin/env python
"""Start an MXNet parameter-server job (scheduler, servers, workers) with the DMLC environment.

    python tools/launch.py -n 2 -s 1 python example/train_imagenet.py --kv-store dist_sync ...
    python tools/launch.py -n 4 -s 2 --launcher ssh -H hosts python example/train_imagenet.py ...

The logic is bmx.distributed (docs/distributed.md); --help lists the options.

Nothing the job starts outlives this launcher, even if it is killed with SIGKILL (which it cannot
catch, so bmx.distributed cannot stop the job): on Linux a guard process watches it, and when it
is gone kills every process that carries this launch's mark in its environment (the commands and
whatever they start, e.g. the python processes of a ``bash -c "python ..."`` wrapper). A process
that clears its environment escapes the mark.
"""
import os
import subprocess
import sys
import uuid

MARK = "BMX_LAUNCH_ID"

# Runs in the guard: blocks until the launcher's end of the pipe closes (at the launcher's exit,
# however it dies), then SIGKILLs the marked processes until none is left (a process may fork
# while the others are being killed).
GUARD = r"""
import os, signal, sys, time
mark, launcher = sys.argv[1].encode(), int(sys.argv[2])
sys.stdin.buffer.read()
skip = {os.getpid(), launcher}

def marked():
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) not in skip:
            try:
                with open(f"/proc/{name}/environ", "rb") as f:
                    if mark in f.read().split(b"\0"):
                        found.append(int(name))
            except OSError:
                pass
    return found

for _ in range(100):
    pids = marked()
    if not pids:
        break
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    time.sleep(0.02)
"""

try:
    from bmx import distributed  # standard library only: this process never imports mxnet
except ModuleNotFoundError as err:
    if err.name != "bmx":
        raise
    sys.exit("launch.py: bmx is not installed (pip install -e . in the repository)")


def start_guard():
    """Starts the guard (Linux: it reads /proc) and marks this process's environment, which every
    process the job starts inherits. Returns the guard's Popen, whose stdin this process holds open."""
    if not os.path.isdir("/proc/self"):
        return None
    mark = f"{MARK}={uuid.uuid4().hex}"
    env = {k: v for k, v in os.environ.items() if k != MARK}
    # its own session: a Ctrl-C at the terminal must not end the guard before the job
    guard = subprocess.Popen([sys.executable, "-c", GUARD, mark, str(os.getpid())], stdin=subprocess.PIPE,
                             stdout=subprocess.DEVNULL, env=env, start_new_session=True)
    name, _, value = mark.partition("=")
    os.environ[name] = value
    return guard


if __name__ == "__main__":
    # held until exit: closing the guard's stdin (as garbage collection would) tells it the launcher is gone
    guard = start_guard()
    sys.exit(distributed.main())
