"""The model zoo: BinaryDenseNet, MeliusNet, ResNetE and the BinaryDenseNet poster's ablation networks.

``get_model(name, classes=1000, **kwargs)`` builds a zoo model; keyword arguments override the
variant's defaults (any knob of its family: ``stem``, ``binary``, ``clip_threshold``,
``growth_rate``, ``init_features``, ``layers``, ``reduction`` / ``transition_channels``,
``downsample``, ``dilation``, ``channels``), so new variants need no new code. Every model's
parameter shapes are known at construction.
"""
import difflib

from ..recipes import PUBLISHED  # published sizes and operation counts live with the recipes
from . import common, densenet, meliusnet, resnet_e
from .densenet import BinaryDenseNet
from .meliusnet import MeliusNet
from .resnet_e import BinaryResNetE

__all__ = ["get_model", "list_models", "PUBLISHED", "BinaryDenseNet", "MeliusNet", "BinaryResNetE", "common",
           "densenet", "meliusnet", "resnet_e"]

_REGISTRY = {name: (family, spec)
             for family, specs in ((BinaryDenseNet, densenet.SPECS), (MeliusNet, meliusnet.SPECS),
                                   (BinaryResNetE, resnet_e.SPECS))
             for name, spec in specs.items()}

_ALIASES = {"binary_densenet": "binary_densenet28"}

# A variant's channel rule is either a reduction factor or explicit widths; giving one replaces the other.
_EXCLUSIVE = {"reduction": "transition_channels", "transition_channels": "reduction"}

def list_models():
    """The zoo's model names: BinaryDenseNets, the poster's rows, MeliusNets, ResNetEs.

    The alias ``binary_densenet`` (BinaryDenseNet-28) is accepted by :func:`get_model` but not listed.
    """
    return list(_REGISTRY)


def get_model(name, classes=1000, **kwargs):
    """Builds the zoo model ``name``.

    Args:
        name: one of :func:`list_models` (or an alias).
        classes: outputs of the last Dense.
        **kwargs: overrides of the variant's defaults, passed to its family class
            (:class:`BinaryDenseNet`, :class:`MeliusNet` or :class:`BinaryResNetE`).

    Returns:
        The model (a HybridBlock; not initialized).

    Raises:
        ValueError: unknown name (the message lists close matches) or invalid knobs.
    """
    key = _ALIASES.get(name, name)
    if key not in _REGISTRY:
        known = list_models() + sorted(_ALIASES)
        close = difflib.get_close_matches(str(name), known, n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model {name!r}{hint} (known models: {', '.join(list_models())})")
    family, spec = _REGISTRY[key]
    options = {k: v for k, v in spec.items() if _EXCLUSIVE.get(k) not in kwargs}
    options.update(kwargs)
    return family(classes=classes, **options)
