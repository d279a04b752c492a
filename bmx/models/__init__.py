"""The model zoo: BinaryDenseNet, MeliusNet, ResNetE and the BinaryDenseNet poster's ablation networks.

``get_model(name, classes=1000, **kwargs)`` builds a zoo model; keyword arguments override the
variant's defaults (any knob of its family: ``stem``, ``binary``, ``clip_threshold``,
``growth_rate``, ``init_features``, ``layers``, ``reduction`` / ``transition_channels``,
``downsample``, ``dilation``, ``channels``), so new variants need no new code. Every model's
parameter shapes are known at construction.
"""
import difflib

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

# Published numbers (REFERENCE.md sections 2-3), per (model, stem), at 224x224 and 1000 classes.
PUBLISHED = {
    ("binary_resnet_e18", "imagenet"): dict(size_mb=4.00, size_mb_fp32=44.59),
    ("binary_densenet28", "imagenet"): dict(size_mb=4.04, ops=2.58e8, binary_macs=3.59e9),
    ("binary_densenet28", "grouped"): dict(ops=2.09e8),
    ("binary_densenet37", "imagenet"): dict(size_mb=5.13, ops=2.70e8, binary_macs=4.51e9),
    ("binary_densenet37", "grouped"): dict(ops=2.20e8),
    ("binary_densenet45", "imagenet"): dict(size_mb=7.35, binary_macs=6.43e9),
    ("meliusnet22", "imagenet"): dict(size_mb=3.89),
    ("meliusnet29", "imagenet"): dict(size_mb=5.08),
    ("bdn_poster_8x256", "imagenet"): dict(size_mb=3.31),
    ("bdn_poster_16x128", "imagenet"): dict(size_mb=3.39),
    ("bdn_poster_32x64", "imagenet"): dict(size_mb=3.45),
    ("bdn_poster_16x128_fpds", "imagenet"): dict(size_mb=3.03),
    ("bdn_poster_32x64_fpds", "imagenet"): dict(size_mb=3.08),
}


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
