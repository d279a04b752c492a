"""The compiled packed model and ``load``."""
import os
import threading
import time

import numpy as np

from .. import packed, xnor
from .compiler import Compiler
from .graph import F32
from .planner import Planner


class Model(Compiler, Planner):
    """A compiled packed model: ``model(x)`` / ``model.forward(x)`` runs it on float32 NCHW input.

    Attributes: ``meta`` (model.json), ``input_name`` (the graph's input variable),
    ``input_channels`` (None if the graph does not fix them), ``output_names``, ``threads`` (of the
    bit kernels), ``directory``.
    """

    def __init__(self, packed_model, threads=None):
        """Compiles a :class:`bmx.packed.PackedModel`; ``threads`` defaults to bmx.xnor.default_threads()."""
        if threads is None:
            threads = xnor.default_threads()
        elif isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
            raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
        self.threads = int(threads)
        self.meta = packed_model.meta
        self.directory = packed_model.directory
        self._name = self.directory or "the model"  # how messages name it
        self._file = os.path.join(self._name, packed.SYMBOL_FILE)
        self._plans = {}
        self._bound = None  # the plan whose arena exists
        self._lock = threading.Lock()
        self._compile(packed_model.graph, self._parameters(packed_model.params))

    def __call__(self, x):
        return self.forward(x)

    def __repr__(self):
        return (f"bmx.runtime.Model({self.directory!r}, input {self.input_name!r} with "
                f"{self.input_channels} channels, {len(self._entries)} steps, threads={self.threads})")

    def _parameters(self, params):
        names = {}
        for key, value in params.items():
            kind, _, name = key.partition(":")
            if kind not in ("arg", "aux") or not name:
                raise packed.PackedFormatError(f"{os.path.join(self._name, packed.PARAMS_FILE)}: parameter key {key!r} "
                                               "is not 'arg:NAME' or 'aux:NAME'")
            if name in names:
                raise packed.PackedFormatError(
                    f"{os.path.join(self._name, packed.PARAMS_FILE)}: {name!r} is stored twice")
            names[name] = value
        return names

    def forward(self, x):
        """Runs the model on ``x``: (N, C, H, W) float32 (other real dtypes are converted).

        Returns the output array, e.g. (N, classes) logits, or a tuple if the graph has several
        heads. Raises ValueError if x does not fit the model (naming the node that rejects it).
        """
        return self._execute(x, None)

    def profile(self, x):
        """Runs the model on ``x`` as :meth:`forward` does, timing each step (time.perf_counter).

        Returns (output, steps): steps is a list, in execution order, of (node name, kind,
        seconds), kind being the step's op as the runtime runs it after its rewrites (e.g.
        'XnorConv', 'Convolution 7x7', 'Pooling max', 'Concat'). Steps folded away at load time
        are not there; their time is part of the step they were folded into.
        """
        steps = []
        kinds = {e.out: (e.node.name, step_kind(e.op)) for e in self._entries}

        def timed(run, out):
            name, kind = kinds[out]

            def call(*args, **kwargs):
                start = time.perf_counter()
                result = run(*args, **kwargs)
                steps.append((name, kind, time.perf_counter() - start))
                return result
            return call

        return self._execute(x, timed), steps

    def _execute(self, x, wrap):
        """forward, with each step's run replaced by wrap(run, output slot) if wrap is given."""
        x = self._check_input(x)
        with self._lock:  # the plan's buffers are shared by all calls
            plan = self._plans.get(x.shape) or self._plan(x.shape)
            if self._bound is not plan:
                if self._bound is not None:
                    self._bound.bound = None  # one arena at a time: free the previous shape's
                self._bound = plan
            regs = plan.template.copy()
            regs[0] = x
            steps = plan.bind()
            if wrap is not None:
                steps = [(wrap(run, out), args, out, view, frees) for run, args, out, view, frees in steps]
            for run, args, out, view, frees in steps:
                regs[out] = run(*[regs[a] for a in args]) if view is None else run(*[regs[a] for a in args], out=view)
                for slot in frees:
                    regs[slot] = None
            outputs = tuple(np.array(regs[h]) for h in self._heads)  # copies: the arena is reused
        return outputs[0] if len(outputs) == 1 else outputs

    def _check_input(self, x):
        x = np.asarray(x)
        if x.dtype != F32:
            if x.dtype.kind not in "fiub":
                raise TypeError(f"{self._name}: the input must be a real (float32) array, got {x.dtype}")
            x = x.astype(F32)
        if x.ndim != 4:
            raise ValueError(f"{self._name}: the input must be 4-D (N, C, H, W), got shape {x.shape}")
        if self.input_channels is not None and x.shape[1] != self.input_channels:
            raise ValueError(f"{self._name}: the model takes {self.input_channels} input channels (NCHW), "
                             f"got shape {x.shape}")
        return np.ascontiguousarray(x)


def step_kind(op):
    """A step's op for a profile: its class, with the kernel of a convolution and the kind of a pooling."""
    kind = type(op).__name__.strip("_")
    if kind == "Chain":
        return f"{step_kind(op.first)} + {step_kind(op.second)}"
    if kind in ("Convolution", "XnorConv"):
        return f"{kind} {op.kernel[0]}x{op.kernel[1]}"
    if kind == "Pooling":
        return f"{kind} {'global ' if op.global_pool else ''}{op.kind}"
    return kind


def load(directory, threads=None):
    """Loads and compiles the packed model in ``directory`` (see :mod:`bmx.packed`).

    ``threads``: threads of the bit kernels (default :func:`bmx.xnor.default_threads`). Returns a
    :class:`Model`. Raises bmx.packed.PackedFormatError naming the file (and node) for a missing or
    malformed file or an op the runtime does not support.
    """
    return Model(packed.load_model(directory), threads)
