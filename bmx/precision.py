"""Mixed-precision training: bfloat16 on CPUs with oneDNN bfloat16 kernels, float16 on GPUs.

``dtype`` of :class:`bmx.training.Recipe` selects one of :data:`DTYPES`:

* ``'float32'``: everything in float32.
* ``'bfloat16'`` (CPU): :func:`training_block` runs the net as a graph in which every
  ``Convolution`` and ``FullyConnected`` casts its inputs (data, weights, bias) to bfloat16
  (``mxnet.contrib.amp.convert_symbol``, ``amp_cast`` nodes) and all other operators run in
  float32: BatchNorm (its statistics, gamma and beta stay float32 parameters), bmx's sign and
  quantizer operators (their input comes from a BatchNorm) and the loss. The graph's output is
  cast back to float32. The parameters are the float32 parameters of the original net, shared,
  not copied: the optimizer updates float32 master weights with float32 gradients (``amp_cast``'s
  gradient is cast back to the input's dtype), and checkpoints, resume and export see a float32
  net, so the exported model is float32.

  A binary convolution sees +-1 activations and +-1 weights, which bfloat16 holds exactly; its
  accumulation runs in float32 inside oneDNN, so only the rounding of its output to bfloat16
  (8 significant bits: a relative error of at most 2^-9) differs from float32.

  bmx's native operators stay float32 rather than accepting bfloat16: their input is a
  BatchNorm's output, they are elementwise (memory-bound, not compute-bound), and AMP cannot be
  told to cast around operators it does not list, so they take whatever dtype flows in. Keeping
  every operator but the convolutions and dense layers in float32 also keeps Concat and the
  residual additions from mixing dtypes. A convolution's bfloat16 input cast is needed in every
  design; what float32 costs is one cast of each convolution's output back to float32.

  oneDNN (mxnet 1.9.1 ships oneDNN 2.4) runs bfloat16 convolutions natively only on CPUs with
  AVX-512 BF16 (``avx512_bf16``: AMD Zen 4 and later, Intel Cooper Lake and Sapphire Rapids and
  later); on AVX-512 CPUs without it oneDNN emulates bfloat16, which is slower than float32, and
  on AVX2-only CPUs it has no bfloat16 convolution at all. :func:`check` refuses ``'bfloat16'``
  on such CPUs with an error that says so, rather than training slower.
* ``'float16'`` (GPU only: MXNet 1.9 has no float16 convolution on CPUs): the net is cast to
  float16 and the optimizer keeps float32 master weights (``multi_precision``); the net is cast
  back to float32 before export.
"""
import functools

import mxnet as mx
from mxnet.contrib import amp
from mxnet.contrib.amp.lists import symbol_bf16
from mxnet.gluon import SymbolBlock

__all__ = ["DTYPES", "BFLOAT16", "check", "bfloat16_support", "training_block", "mixed_symbol", "input_dtype",
           "cpu_flags"]

DTYPES = ("float32", "bfloat16", "float16")
# The dtype object MXNet's amp_cast understands (the string 'bfloat16' is not).
BFLOAT16 = amp.amp.bfloat16
# Low-precision operators: what AMP casts to bfloat16 by default.
LOW_PRECISION_OPS = ("Convolution", "FullyConnected")
# Operators AMP would run in bfloat16 when their input is (BatchNorm, Concat, Pooling, ...): all
# kept in float32 here (see the module docstring).
FLOAT32_OPS = tuple(symbol_bf16.BF16_FP32_FUNCS)


def _cpuinfo(field):
    """The value of the first ``field`` line of /proc/cpuinfo, or None where there is none."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(field):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_flags():
    """The CPU feature flags of /proc/cpuinfo (an empty set where it cannot be read)."""
    return set((_cpuinfo("flags") or "").split())


def cpu_model():
    """The CPU's model name from /proc/cpuinfo, or None where it cannot be read."""
    return _cpuinfo("model name")


def _probe():
    """Runs a small bfloat16 convolution forward and backward; None if it works, else why not."""
    x = mx.nd.amp_cast(mx.nd.ones((1, 8, 4, 4)), dtype=BFLOAT16)
    w = mx.nd.amp_cast(mx.nd.ones((8, 8, 3, 3)), dtype=BFLOAT16)
    x.attach_grad()
    try:
        with mx.autograd.record():
            y = mx.nd.Convolution(x, w, kernel=(3, 3), num_filter=8, no_bias=True)
        y.backward()
        mx.nd.waitall()
    except mx.MXNetError as err:
        lines = str(err).strip().splitlines()
        return lines[-1] if lines else type(err).__name__
    return None


@functools.lru_cache(maxsize=None)
def bfloat16_support():
    """(supported, reason): whether this CPU trains in bfloat16 natively, and if not, why not."""
    if "avx512_bf16" not in cpu_flags():
        return False, (f"{cpu_model() or 'this CPU'} lacks AVX-512 BF16 (no 'avx512_bf16' in /proc/cpuinfo), so "
                       "oneDNN has no native bfloat16 convolution on it (none at all without AVX-512, a "
                       "slower-than-float32 emulation with it)")
    failure = _probe()
    if failure:
        return False, f"a bfloat16 convolution fails in this MXNet build: {failure}"
    return True, ""


def check(dtype, ctx):
    """Raises ValueError if contexts ``ctx`` cannot train in ``dtype`` (see the module docstring)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    cpus = any(c.device_type == "cpu" for c in ctx)
    if dtype == "float16" and cpus:
        raise ValueError("float16 training needs GPU contexts (--ctx gpu:...): MXNet 1.9 implements float16 "
                         "convolution and fully-connected layers only with CUDA ('FP16 gemm on cpu not implemented')")
    if dtype == "bfloat16":
        if len(ctx) != 1 or not cpus:
            raise ValueError("bfloat16 training runs on one CPU context (--ctx cpu); use float16 on GPUs")
        supported, reason = bfloat16_support()
        if not supported:
            raise ValueError(f"bfloat16 training is not available here: {reason}. Train with --dtype float32")


def input_dtype(dtype):
    """The dtype of the batches fed to the :func:`training_block` of ``dtype`` (the bfloat16 graph
    casts its float32 input itself)."""
    return "float16" if dtype == "float16" else "float32"


def mixed_symbol(net, input_name="data"):
    """The bfloat16 graph of ``net`` (see the module docstring), with a float32 output."""
    symbol = net(mx.sym.var(input_name, dtype="float32"))
    float32_ops = [op for op in symbol_bf16.FP32_FUNCS if op not in LOW_PRECISION_OPS] + list(FLOAT32_OPS)
    mixed = amp.convert_symbol(symbol, target_dtype="bfloat16", target_dtype_ops=list(LOW_PRECISION_OPS),
                               fp32_ops=float32_ops, data_names=symbol.list_inputs(), cast_optional_params=False)
    # amp_cast of a float32 output would be a no-op; the classifier's FullyConnected gives bfloat16.
    return mx.sym.amp_cast(mixed, dtype="float32", name="bmx_output_float32")


def training_block(net, dtype):
    """The block that computes ``net``'s forward pass in ``dtype`` during training and evaluation.

    ``net`` must be initialized, with all parameter shapes known. For ``'float32'`` this is ``net``;
    for ``'float16'``, ``net`` cast to float16; for ``'bfloat16'``, a hybridized ``SymbolBlock`` of
    the mixed graph sharing ``net``'s float32 parameters.
    """
    if dtype == "float32":
        return net
    if dtype == "float16":
        net.cast("float16")
        return net
    if dtype != "bfloat16":
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    block = SymbolBlock(mixed_symbol(net), mx.sym.var("data", dtype="float32"), params=net.collect_params())
    block.hybridize(static_alloc=True, static_shape=True)
    return block
