"""Optimizers that MXNet 1.9 lacks, registered with ``mx.optimizer.register``.

Importing this module (``bmx.training`` does) makes ``'radam'`` available wherever MXNet takes an
optimizer name: ``mx.gluon.Trainer(params, 'radam', {...})``, ``mx.optimizer.create('radam')``.
"""
import math

import mxnet as mx
# The ndarray module itself, not the mx.nd alias: a dist_async parameter server unpickles this
# optimizer while `import mxnet` is still running (its server loop starts inside that import, before
# the alias exists), and a missing mx.nd there fails every update silently.
from mxnet import ndarray as nd

__all__ = ["RAdam"]


@mx.optimizer.register
class RAdam(mx.optimizer.Optimizer):
    r"""Rectified Adam (Liu et al., "On the Variance of the Adaptive Learning Rate and Beyond", 2019).

    Adam's adaptive step has a huge variance in the first updates, when the second-moment estimate
    rests on few gradients; the usual cure is a learning-rate warmup. RAdam instead takes plain
    momentum steps while that variance is undefined and then scales the adaptive step by a
    rectification term that grows to 1, so that no warmup has to be tuned. The later BinaryDenseNet
    and MeliusNet results were trained with it (beta1 0.95, lr 0.002, cosine schedule).

    Update of a weight :math:`w` at its step :math:`t = 1, 2, \dots`, with learning rate
    :math:`\eta_t` (from the scheduler), weight decay :math:`\lambda` (times the parameter's
    ``wd_mult``)::

        g     = clip(rescale_grad * grad, clip_gradient) + wd * w     # clip only if clip_gradient is set
        m     = beta1 * m + (1 - beta1) * g                            # first moment, m_0 = 0
        v     = beta2 * v + (1 - beta2) * g^2                          # second moment, v_0 = 0
        m_hat = m / (1 - beta1^t)
        rho_inf = 2 / (1 - beta2) - 1
        rho_t   = rho_inf - 2 t beta2^t / (1 - beta2^t)                # length of the SMA of v
        if rho_t > 4:                                                  # variance of 1/sqrt(v) is finite
            v_hat = v / (1 - beta2^t)
            r_t   = sqrt((rho_t - 4) (rho_t - 2) rho_inf / ((rho_inf - 4) (rho_inf - 2) rho_t))
            w     = w - lr * r_t * m_hat / (sqrt(v_hat) + epsilon)
        else:                                                          # the first few steps
            w     = w - lr * m_hat

    With the default beta2 = 0.999 the first four steps are momentum steps. The threshold 4 is
    the paper's (its Algorithm 2); r_t is real and positive above it.

    Args:
        learning_rate: base learning rate (the scheduler's, if one is given).
        beta1: decay of the first moment (0.9 as in the paper; the published BNN recipe uses 0.95).
        beta2: decay of the second moment.
        epsilon: added to sqrt(v_hat).
        **kwargs: :class:`mxnet.optimizer.Optimizer` arguments (``wd``, ``rescale_grad``,
            ``clip_gradient``, ``lr_scheduler``, ``multi_precision``: with float16 weights the
            update runs on a float32 master copy).
    """

    def __init__(self, learning_rate=0.001, beta1=0.9, beta2=0.999, epsilon=1e-8, **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)
        if not (0 <= beta1 < 1 and 0 <= beta2 < 1):
            raise ValueError(f"RAdam needs 0 <= beta1, beta2 < 1, got beta1={beta1}, beta2={beta2}")
        self.beta1 = beta1
        self.beta2 = beta2
        self.epsilon = epsilon

    def create_state(self, index, weight):
        zeros = dict(ctx=weight.context, dtype=weight.dtype, stype=weight.stype)
        return nd.zeros(weight.shape, **zeros), nd.zeros(weight.shape, **zeros)

    def update(self, index, weight, grad, state):
        self._update_count(index)
        lr = self._get_lr(index)
        wd = self._get_wd(index)
        t = self._index_update_count[index]
        mean, var = state

        g = grad * self.rescale_grad
        if self.clip_gradient is not None:
            g = nd.clip(g, -self.clip_gradient, self.clip_gradient)
        if wd:
            g = g + wd * weight
        mean[:] = self.beta1 * mean + (1 - self.beta1) * g
        var[:] = self.beta2 * var + (1 - self.beta2) * nd.square(g)

        bias1 = 1 - self.beta1 ** t
        bias2 = 1 - self.beta2 ** t
        rho_inf = 2 / (1 - self.beta2) - 1
        rho_t = rho_inf - 2 * t * self.beta2 ** t / bias2
        if rho_t > 4:
            rect = math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
            weight[:] = weight - (lr * rect / bias1) * mean / (nd.sqrt(var / bias2) + self.epsilon)
        else:
            weight[:] = weight - (lr / bias1) * mean
