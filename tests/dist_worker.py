"""The command that tests/test_distributed.py runs through tools/launch.py (every role runs it).

    python tests/dist_worker.py train DATA_DIR OUT [--resume] [--crash-in-step N]
    python tests/dist_worker.py cli ARGS...     # example/train_imagenet.py ARGS...
    python tests/dist_worker.py loop            # push/pull until killed
    python tests/dist_worker.py wait            # no mxnet: wait for a signal
    python tests/dist_worker.py fail            # no mxnet: workers exit with status 3, the others wait

First of all it records ``ROLE-PID`` in the directory ``$BMX_TEST_PIDS`` (and later other marks,
e.g. ``ready-...``): the test checks that none of these processes (nor the ``sleep`` a looping
worker starts) outlives the launcher. Scheduler and server processes then stay inside
``import mxnet``.

``train`` is also imported by the test for the single-process reference (:func:`train`).
"""
import os
import runpy
import signal
import subprocess
import sys
import time


def _record(name):
    directory = os.environ.get("BMX_TEST_PIDS")
    if directory:
        open(os.path.join(directory, name), "w").close()


def _wait_for_a_signal():
    def note(number, frame):
        _record(f"got-{signal.Signals(number).name}-{os.getpid()}")
        sys.exit(0)
    signal.signal(signal.SIGTERM, note)
    signal.signal(signal.SIGINT, note)
    _record(f"ready-{os.getpid()}")
    while True:
        time.sleep(0.05)


if __name__ == "__main__":
    _record(f"{os.environ.get('DMLC_ROLE', 'single')}-{os.getpid()}")
    # The modes without mxnet: every role runs the same Python code.
    if sys.argv[1] == "wait" or (sys.argv[1] == "fail" and os.environ["DMLC_ROLE"] != "worker"):
        _wait_for_a_signal()
    elif sys.argv[1] == "fail":
        sys.exit(3)

import mxnet as mx  # noqa: E402  (the scheduler and server processes never get past this line)
from mxnet.gluon import nn  # noqa: E402

import bmx  # noqa: E402
from bmx import data, training  # noqa: E402

BATCH = 8      # per worker
WORKERS = 2
IMAGES = 72    # 64 training images after the hold-out of 8: 4 steps of 2 x 8 per epoch


def make_net():
    """A small binary net without BatchNorm (whose batch statistics are per worker): a
    full-precision first convolution, a binary convolution, a binary dense layer."""
    net = nn.HybridSequential()
    net.add(nn.Conv2D(8, 3, strides=2, padding=1, in_channels=3),
            bmx.nn.BinaryConvolution(16, 3, strides=2, padding=1, in_channels=8, apply_scaling=True),
            nn.GlobalAvgPool2D(),
            bmx.nn.QDense(10, in_units=16, apply_scaling=True))
    return net


def recipe(batch_size):
    # Plain SGD: an update is a function of the summed gradient alone.
    return training.Recipe(optimizer="sgd", momentum=0.0, lr=0.01, lr_mode="cosine", epochs=2,
                           batch_size=batch_size, seed=3)


def train(kv, data_dir, out, resume=False, batch_size=BATCH):
    """Trains make_net() for recipe's 2 epochs with kvstore ``kv`` (a name or KVStore); returns the
    Run (parameters in run.net)."""
    rank, workers = (0, 1) if isinstance(kv, str) else (kv.rank, kv.num_workers)
    bundle = data.cifar10(data_dir, batch_size, val_size=8, seed=3, num_parts=workers, part_index=rank)
    run = training.Run(make_net(), bundle, recipe(batch_size), out, config={"model": "dist-test"}, kvstore=kv,
                       resume=resume, progress=False)
    run.fit()
    return run


def _loop():
    kv = training.create_kvstore("dist_sync")
    child = subprocess.Popen(["sleep", "600"])  # a grandchild of the launcher: it must not survive either
    _record(f"child-{child.pid}")
    kv.init(0, mx.nd.zeros((4,)))
    out = mx.nd.zeros((4,))
    for step in range(100000):
        kv.pushpull(0, mx.nd.ones((4,)), out=out)
        out.wait_to_read()
        if step == 3:
            _record(f"ready-{kv.rank}-{os.getpid()}")
        time.sleep(0.02)


def main(argv):
    if argv[0] == "loop":
        _loop()
        return 0
    if argv[0] == "cli":
        script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "example",
                              "train_imagenet.py")
        sys.argv = [script] + argv[1:]
        runpy.run_path(script, run_name="__main__")  # ends the process (training.exit_process)
    _, data_dir, out, *options = argv
    kv = training.create_kvstore("dist_sync")
    if "--crash-in-step" in options and kv.rank == 1:
        crash_at = int(options[options.index("--crash-in-step") + 1])
        step, calls = training.Step.__call__, []

        def crash(self, *args):
            calls.append(1)
            if len(calls) == crash_at:
                raise RuntimeError("injected crash")
            return step(self, *args)
        training.Step.__call__ = crash
    run = train(kv, data_dir, out, resume="--resume" in options)
    run.net.save_parameters(os.path.join(os.path.dirname(out), f"rank{run.rank}.params"))
    return 0


if __name__ == "__main__":
    training.exit_process(main(sys.argv[1:]))
