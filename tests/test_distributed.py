"""bmx.distributed and tools/launch.py, and training on MXNet's parameter server, on 127.0.0.1 only.

The jobs run tests/dist_worker.py through the launcher: 2 workers + 1 server training a small
BN-free binary net (identical to one process stepping on the combined batches), a crash and
resume, the CLI with dist_async, a worker killed mid-run, forwarded signals. Every launched
process records its pid first, so each test can check that nothing outlives the launcher (and
kills leftovers in ``finally`` if the launcher itself misbehaves).
"""
import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time

import mxnet as mx
import numpy as np
import pytest

import dist_worker
from bmx import distributed, training
from test_data import write_cifar

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = [sys.executable, os.path.join(ROOT, "tools", "launch.py")]
WORKER = [sys.executable, os.path.join(ROOT, "tests", "dist_worker.py")]
STEPS_PER_EPOCH = (dist_worker.IMAGES - 8) // (dist_worker.BATCH * dist_worker.WORKERS)


# ----------------------------------------------------------------------------- helpers

def alive(pid):
    """Running (a zombie waiting to be reaped, e.g. by a container's init, is dead)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


class Job:
    """A launcher process started by :func:`launched`, and the marks its processes left."""

    def __init__(self, tmp_path, name, argv, env):
        self.marks = tmp_path / f"marks-{name}"
        self.marks.mkdir()
        self.out_path, self.err_path = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.proc = subprocess.Popen(LAUNCH + argv, stdout=out, stderr=err, start_new_session=True,
                                         env=dict(os.environ, BMX_TEST_PIDS=str(self.marks), OMP_NUM_THREADS="1",
                                                  **env))

    def wait(self, timeout):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the launcher did not finish within {timeout} s:\n{self.output()}")

    def output(self):
        return self.out_path.read_text() + self.err_path.read_text()

    @property
    def stdout(self):
        return self.out_path.read_text()

    @property
    def stderr(self):
        return self.err_path.read_text()

    def mark_names(self):
        return sorted(os.listdir(self.marks))

    def pids(self, kind=None):
        """pids the processes recorded (``ROLE-PID``, ``child-PID``), optionally of one kind."""
        found = {}
        for name in self.mark_names():
            head, _, pid = name.rpartition("-")
            if head in ("scheduler", "server", "worker", "child"):
                found.setdefault(head, []).append(int(pid))
        return found.get(kind, []) if kind else [p for pids in found.values() for p in pids]

    def wait_for_marks(self, prefix, count, timeout=90):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            names = [n for n in self.mark_names() if n.startswith(prefix)]
            if len(names) >= count:
                return names
            if self.proc.poll() is not None:
                pytest.fail(f"the launcher exited ({self.proc.returncode}) early:\n{self.output()}")
            time.sleep(0.1)
        pytest.fail(f"no {count} {prefix!r} marks within {timeout} s:\n{self.output()}")

    def survivors(self):
        return [pid for pid in self.pids() if alive(pid)]

    def kill_everything(self):
        """The safety net: the launcher's group, then whatever recorded process still runs our code."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        for pid in self.survivors():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    ours = b"dist_worker.py" in f.read() or pid in self.pids("child")
                if ours:
                    os.kill(pid, signal.SIGKILL)
            except (FileNotFoundError, ProcessLookupError):
                pass


@contextlib.contextmanager
def launched(tmp_path, argv, name="job", env=None):
    job = Job(tmp_path, name, argv, env or {})
    try:
        yield job
    finally:
        job.kill_everything()


def read_params(path):
    return {k: v.asnumpy() for k, v in mx.nd.load(str(path)).items()}


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """The toy CIFAR-10 files and the single-process reference: batch 2 x 8, same recipe."""
    root = tmp_path_factory.mktemp("toy")
    data_dir = write_cifar(str(root / "data"), count=dist_worker.IMAGES)
    run = dist_worker.train("local", data_dir, str(root / "single"), batch_size=dist_worker.BATCH * dist_worker.WORKERS)
    run.net.save_parameters(str(root / "single.params"))
    initial = dist_worker.make_net()
    training._prepare(initial, dist_worker.recipe(dist_worker.BATCH), [mx.cpu()], "he")
    initial.save_parameters(str(root / "initial.params"))
    return dict(data=data_dir, reference=read_params(root / "single.params"),
                initial=read_params(root / "initial.params"))


def assert_matches_reference(params, toy):
    assert params.keys() == toy["reference"].keys()
    for name, value in params.items():
        np.testing.assert_allclose(value, toy["reference"][name], rtol=0, atol=1e-5, err_msg=name)
    # Training moved every parameter far more than the tolerance: the comparison means something.
    for name, value in params.items():
        assert np.abs(value - toy["initial"][name]).max() > 1e-3, name


def train_argv(toy, out, *options):
    return ["-n", "2", "-s", "1"] + WORKER + ["train", toy["data"], str(out), *options]


# ----------------------------------------------------------------------------- training on the parameter server

@pytest.mark.slow
def test_two_workers_train_like_one_process_on_the_combined_batches(tmp_path, toy):
    out = tmp_path / "run"
    with launched(tmp_path, train_argv(toy, out)) as job:
        assert job.wait(120) == 0, job.output()
        assert len(job.pids("worker")) == 2 and len(job.pids("server")) == 1 and not job.survivors()
    rank0, rank1 = read_params(tmp_path / "rank0.params"), read_params(tmp_path / "rank1.params")
    for name in rank0:
        np.testing.assert_array_equal(rank0[name], rank1[name], err_msg=name)
    assert_matches_reference(rank0, toy)

    # Only rank 0 wrote the run's files (both workers were given the same directory).
    with open(out / "train.log") as f:
        log = f.read()
    assert log.count("run: ") == 1 and log.count("epoch 2/2") == 1 and "per worker x 2 workers" in log
    with open(out / "state.json") as f:
        state = json.load(f)
    assert state["finished"] and state["config"]["workers"] == 2 and state["states"] == "checkpoint-0002.states"
    assert len((out / "metrics.csv").read_text().splitlines()) == 3


@pytest.mark.slow
def test_a_crashed_worker_fails_the_job_and_the_run_resumes(tmp_path, toy):
    out = tmp_path / "run"
    # Rank 1 raises in the 2nd step of epoch 2, after rank 0 checkpointed epoch 1.
    with launched(tmp_path, train_argv(toy, out, "--crash-in-step", str(STEPS_PER_EPOCH + 2)), "crash") as job:
        assert job.wait(120) == 1, job.output()
        assert "RuntimeError: injected crash" in job.stderr
        assert "exited with status 1; stopping the other" in job.stderr
        assert not job.survivors()
    with open(out / "state.json") as f:
        assert json.load(f)["epoch"] == 1
    with launched(tmp_path, train_argv(toy, out, "--resume"), "resume") as job:
        assert job.wait(120) == 0, job.output()
    assert "resumed" in (out / "train.log").read_text()
    rank0, rank1 = read_params(tmp_path / "rank0.params"), read_params(tmp_path / "rank1.params")
    for name in rank0:
        np.testing.assert_array_equal(rank0[name], rank1[name], err_msg=name)
    # Both workers restored parameters, SGD state, schedule and data order: as if never stopped.
    assert_matches_reference(rank0, toy)


@pytest.mark.slow
def test_train_imagenet_with_dist_async(tmp_path, toy):
    """The CLI end to end on dist_async: RAdam runs on the server, rank 0 writes, no optimizer
    state in the checkpoint (it lives on the server)."""
    out = tmp_path / "run"
    tiny = ["--model", "binary_densenet28", "--stem", "cifar", "--layers", "1,1", "--growth-rate", "8",
            "--init-features", "16", "--reduction", "1", "--batch-size", "8", "--no-progress"]
    argv = ["-n", "2", "-s", "1"] + WORKER + ["cli", "--dataset", "cifar10", "--data-dir", toy["data"], "--val-size",
                                              "8", "--epochs", "1", "--kv-store", "dist_async",
                                              "--output-dir", str(out)] + tiny
    with launched(tmp_path, argv) as job:
        assert job.wait(120) == 0, job.output()
    summaries = [line for line in job.stdout.splitlines() if line.startswith('{"output_dir"')]
    assert len(summaries) == 1  # rank 0 only
    with open(out / "state.json") as f:
        state = json.load(f)
    assert state["config"]["kv_store"] == "dist_async" and state["config"]["workers"] == 2
    assert state["states"] is None and not any(name.endswith(".states") for name in os.listdir(out))
    assert {"model-symbol.json", "model-0000.params", "model.json", "metrics.csv"} <= set(os.listdir(out))

    # The server applied RAdam: the weights left their (seeded, reproducible) initial values.
    net = training.build_model("binary_densenet28", 10, stem="cifar", layers=(1, 1), growth_rate=8,
                               init_features=16, reduction=(1,))
    training._prepare(net, training.Recipe(batch_size=8), [mx.cpu()], "he")
    net.save_parameters(str(tmp_path / "initial.params"))
    initial, trained = read_params(tmp_path / "initial.params"), read_params(out / "checkpoint-0001.params")
    trainable = [name for name in initial if "running" not in name]
    assert all(np.abs(trained[name] - initial[name]).max() > 0 for name in trainable)
    assert np.abs(trained["output.weight"] - initial["output.weight"]).max() > 1e-4


# ----------------------------------------------------------------------------- failures, signals, orphans

@pytest.mark.slow
def test_a_killed_worker_stops_the_job_with_a_clear_message_and_no_orphans(tmp_path):
    with launched(tmp_path, ["-n", "2", "-s", "1", "--grace", "5"] + WORKER + ["loop"]) as job:
        ready = job.wait_for_marks("ready-", 2)
        victim = next(int(name.split("-")[2]) for name in ready if name.startswith("ready-1-"))
        assert len(job.pids("child")) == 2
        os.kill(victim, signal.SIGKILL)
        start = time.monotonic()
        code = job.wait(30)
        assert code == 128 + signal.SIGKILL, job.output()
        assert time.monotonic() - start < 10
        assert f"(pid {victim}, 127.0.0.1) was killed by SIGKILL; stopping the other 3 process(es)" in job.stderr
        assert not job.survivors(), job.mark_names()  # scheduler, server, the other worker, both sleeps


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signals_are_forwarded_and_nothing_survives(tmp_path, sig):
    """Workers get the launcher's signal, the scheduler and servers SIGTERM; the exit code is 128 + signal."""
    with launched(tmp_path, ["-n", "2", "-s", "2"] + WORKER + ["wait"]) as job:
        job.wait_for_marks("ready-", 5)
        job.proc.send_signal(sig)
        assert job.wait(30) == 128 + sig, job.output()
        assert f"received {sig.name}; passing it on to the workers" in job.stderr
        got = {int(name.rsplit("-", 1)[1]): name.split("-")[1] for name in job.mark_names() if name.startswith("got-")}
        assert {got.get(pid) for pid in job.pids("worker")} == {sig.name}
        assert {got.get(pid) for pid in job.pids("server") + job.pids("scheduler")} == {"SIGTERM"}
        assert not job.survivors()


def test_a_failing_worker_gives_its_status(tmp_path):
    with launched(tmp_path, ["-n", "2", "-s", "1"] + WORKER + ["fail"]) as job:
        assert job.wait(30) == 3, job.output()
        assert "exited with status 3; stopping the other" in job.stderr
        assert not job.survivors()


def test_a_command_that_cannot_start(tmp_path):
    with launched(tmp_path, ["-n", "1", "-s", "1", str(tmp_path / "no-such-program")]) as job:
        assert job.wait(30) == 127
        assert "cannot start scheduler" in job.stderr and "No such file" in job.stderr


# ----------------------------------------------------------------------------- plans and arguments

def test_local_plan_uses_loopback_only():
    processes = distributed.plan_local(["python", "train.py", "--lr", "0.1"], num_workers=3, num_servers=2)
    assert [p.name for p in processes] == ["scheduler", "server 0", "server 1", "worker 0", "worker 1", "worker 2"]
    ports = {p.env["DMLC_PS_ROOT_PORT"] for p in processes}
    assert len(ports) == 1 and 1024 <= int(ports.pop()) <= 65535
    for p in processes:
        assert p.argv == ["python", "train.py", "--lr", "0.1"] and p.host == "127.0.0.1"
        assert p.env["DMLC_ROLE"] == p.role
        assert p.env["DMLC_PS_ROOT_URI"] == p.env["DMLC_NODE_HOST"] == "127.0.0.1"
        assert (p.env["DMLC_NUM_SERVER"], p.env["DMLC_NUM_WORKER"]) == ("2", "3")


def test_ssh_commands(tmp_path, capsys):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("# cluster\n10.0.0.1\nalice@10.0.0.2  # second box\n\nnode3\n")
    hosts = distributed.read_hostfile(str(hostfile))
    assert hosts == ["10.0.0.1", "alice@10.0.0.2", "node3"]
    command = ["/opt/venv/bin/python", "example/train_imagenet.py", "--output-dir", "runs/a b", "--note", "it's"]
    processes = distributed.plan_ssh(command, num_workers=4, num_servers=2, hosts=hosts, port=9500,
                                     env={"OMP_NUM_THREADS": "4"}, cwd="/shared/bmx dir")
    placement = [(p.name, p.host) for p in processes]
    assert placement == [("scheduler", "10.0.0.1"), ("server 0", "10.0.0.1"), ("server 1", "alice@10.0.0.2"),
                         ("worker 0", "10.0.0.1"), ("worker 1", "alice@10.0.0.2"), ("worker 2", "node3"),
                         ("worker 3", "10.0.0.1")]
    for p in processes:
        assert p.argv[:5] == ["ssh", "-tt", "-o", "BatchMode=yes", p.host] and len(p.argv) == 6 and p.env == {}
        # What the remote shell runs, word by word.
        words = shlex.split(p.argv[5])
        assert words[:5] == ["cd", "/shared/bmx dir", "&&", "exec", "env"]
        assert words[-len(command):] == command
        variables = dict(w.split("=", 1) for w in words[5:-len(command)])
        expected = {"OMP_NUM_THREADS": "4", "DMLC_ROLE": p.role, "DMLC_PS_ROOT_URI": "10.0.0.1",
                    "DMLC_PS_ROOT_PORT": "9500", "DMLC_NUM_SERVER": "2", "DMLC_NUM_WORKER": "4"}
        if p.host != "node3":  # a name is no address to bind to: ps-lite picks the interface itself
            expected["DMLC_NODE_HOST"] = p.host.rpartition("@")[2]
        assert variables == expected

    assert distributed.main(["-n", "2", "-s", "1", "--launcher", "ssh", "-H", str(hostfile), "--dry-run",
                             "python", "x.py"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and lines[0].startswith("scheduler  10.0.0.1") and "ssh -tt" in lines[0]


@pytest.mark.parametrize("argv, message", [
    (["-n", "0", "python", "x.py"], "-n/--num-workers must be at least 1, got 0"),
    (["-n", "2", "-s", "0", "python", "x.py"], "-s/--num-servers must be at least 1, got 0"),
    (["-n", "2"], "no command given"),
    (["-n", "2", "--launcher", "ssh", "python", "x.py"], "--launcher ssh needs -H/--hostfile"),
    (["-n", "2", "--launcher", "ssh", "-H", "{tmp}/missing", "python", "x.py"], "missing: no such file"),
    (["-n", "2", "--launcher", "ssh", "-H", "{tmp}/empty", "python", "x.py"], "lists no hosts"),
    (["-n", "2", "--launcher", "ssh", "-H", "{tmp}/named", "python", "x.py"], "write it as an IP address"),
    (["-n", "2", "-H", "{tmp}/named", "python", "x.py"], "-H/--hostfile is for --launcher ssh"),
    (["-n", "2", "--port", "70000", "python", "x.py"], "--port must be in 1..65535"),
    (["-n", "2", "--env", "BMX_SURELY_UNSET", "python", "x.py"], "BMX_SURELY_UNSET is not set here"),
    (["-n", "2", "--launcher", "mpi", "python", "x.py"], "invalid choice: 'mpi'"),
])
def test_bad_arguments_are_clear_errors(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.delenv("BMX_SURELY_UNSET", raising=False)
    (tmp_path / "empty").write_text("# nothing yet\n")
    (tmp_path / "named").write_text("gpu-node-1\n10.0.0.2\n")
    with pytest.raises(SystemExit) as exc:
        distributed.main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
