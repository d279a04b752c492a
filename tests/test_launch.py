"""tools/launch.py: nothing the job started survives a SIGKILL of the launcher."""
import os
import signal
import subprocess
import sys
import time

import pytest

from test_distributed import alive

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = [sys.executable, os.path.join(ROOT, "tools", "launch.py")]
# Records its pid, then sleeps; the shell around it forks (it has more to do after python), so the
# python process is a grandchild of the launcher, not the process the launcher started.
SLEEPER = "import os, sys, time; open(os.path.join(sys.argv[1], str(os.getpid())), 'w').close(); time.sleep(600)"


def wait_for(condition, timeout, what):
    """Polls generously: on a loaded machine starting python processes can take many seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    pytest.fail(f"{what} within {timeout} s")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the guard reads /proc")
def test_kill_9_of_the_launcher_leaves_no_process_of_a_wrapper_command(tmp_path):
    marks = tmp_path / "pids"
    marks.mkdir()
    command = f"{sys.executable} -c \"{SLEEPER}\" {marks}; echo done"
    launcher = subprocess.Popen(LAUNCH + ["-n", "1", "-s", "1", "--grace", "1", "bash", "-c", command],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    pids = []
    try:
        wait_for(lambda: len(os.listdir(marks)) == 3, 120, "scheduler, server and worker did not start")
        pids = [int(name) for name in os.listdir(marks)]
        assert all(alive(pid) for pid in pids)
        launcher.kill()
        launcher.wait()
        wait_for(lambda: not any(alive(pid) for pid in pids), 60, f"processes {pids} still ran after the launcher died")
    finally:
        if launcher.poll() is None:
            launcher.kill()
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_normal_run_still_ends_cleanly(tmp_path):
    result = subprocess.run(LAUNCH + ["-n", "1", "-s", "1", sys.executable, "-c", "print('hello')"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("hello") == 3  # scheduler, server, worker
