"""Where a training run executes: MXNet contexts, kvstores and how a distributed worker ends.

:func:`parse_ctx` turns ``--ctx`` into contexts; :func:`create_kvstore` makes what
:class:`bmx.training.Run` and :func:`bmx.training.benchmark` take as ``kvstore``; and
:func:`exit_process` ends a process so that a failing worker of a distributed job does not hang the
others (see docs/distributed.md).
"""
import logging
import os
import sys

import mxnet as mx

__all__ = ["parse_ctx", "create_kvstore", "exit_process", "DIST_KVSTORES"]

DIST_KVSTORES = ("dist_sync", "dist_device_sync", "dist_async")


def parse_ctx(spec):
    """``'cpu'``, ``'gpu'`` (= gpu:0) or ``'gpu:0,1,...'`` -> list of MXNet contexts."""
    spec = spec.strip().lower()
    if spec == "cpu":
        return [mx.cpu()]
    kind, _, ids = spec.partition(":")
    if kind != "gpu":
        raise ValueError(f"--ctx must be 'cpu' or 'gpu:0,1,...', got {spec!r}")
    try:
        ctx = [mx.gpu(int(i)) for i in (ids or "0").split(",")]
    except ValueError:
        raise ValueError(f"--ctx must be 'cpu' or 'gpu:0,1,...', got {spec!r}") from None
    gpus = mx.context.num_gpus()
    absent = [c.device_id for c in ctx if not 0 <= c.device_id < gpus]
    if absent:
        raise ValueError(f"--ctx {spec}: " + ("this MXNet has no GPU support (or sees no GPU); use --ctx cpu"
                                              if not gpus else f"there is no gpu {absent[0]} ({gpus} GPU(s))"))
    return ctx


# Whether this process is a worker of a distributed job (create_kvstore made a dist kvstore).
_dist_worker = False


def _leave(code):
    """Ends the process now, skipping Python's finalization."""
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


def exit_process(code):
    """``sys.exit(code)``, except that a failing worker of a distributed job ends at once.

    At exit, MXNet's distributed kvstore waits for every other worker (a barrier before the
    servers are stopped). After a failure the others wait for this worker's gradients instead, so
    a normal exit would hang the whole job; ending at once lets the launcher see the failure and
    stop the rest. :func:`create_kvstore` routes uncaught exceptions here too.
    """
    if code and _dist_worker:
        _leave(code)
    sys.exit(code)


def create_kvstore(name):
    """What :class:`Run` and :func:`benchmark` take as ``kvstore``: a KVStore for the
    parameter-server kinds (``DIST_KVSTORES``), the name itself for the others.

    Create a distributed kvstore before reading the data: its ``rank`` and ``num_workers`` say
    which part of the training data this worker reads.
    """
    if not name.startswith("dist"):
        return name
    if name not in DIST_KVSTORES:
        raise ValueError(f"unknown distributed kvstore {name!r}; choose one of {DIST_KVSTORES}")
    if "DMLC_ROLE" not in os.environ:
        # Without it, ps-lite aborts the process from C++ with a bare check failure.
        raise ValueError(f"kvstore {name} runs on MXNet's parameter server: start the job with tools/launch.py "
                         "(see docs/distributed.md), which sets DMLC_ROLE and the other DMLC_* variables")
    kv = mx.kv.create(name)
    global _dist_worker
    if not _dist_worker:
        # An uncaught exception would end in the exit barrier too (see exit_process).
        _dist_worker = True
        previous = sys.excepthook

        def fail_at_once(kind, value, tb):
            previous(kind, value, tb)
            _leave(1)
        sys.excepthook = fail_at_once
    return kv


def topology(kvstore):
    """(kind, rank, workers) of a kvstore name or KVStore."""
    if isinstance(kvstore, str):
        return kvstore, 0, 1
    return kvstore.type, kvstore.rank, kvstore.num_workers


def synchronous(kind):
    """Whether gradients of all workers are summed before each update (the dist kinds but async)."""
    return kind.startswith("dist") and "async" not in kind
