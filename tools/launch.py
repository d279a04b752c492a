#!/usr/bin/env python
"""Start an MXNet parameter-server job (scheduler, servers, workers) with the DMLC environment.

    python tools/launch.py -n 2 -s 1 python example/train_imagenet.py --kv-store dist_sync ...
    python tools/launch.py -n 4 -s 2 --launcher ssh -H hosts python example/train_imagenet.py ...

The logic is bmx.distributed (docs/distributed.md); --help lists the options.
"""
import importlib.util
import os
import sys


def _load_launcher():
    """bmx/distributed.py on its own, without running bmx/__init__.py: that imports mxnet, which
    takes seconds and would turn this process into a parameter server if DMLC_ROLE were set here."""
    package = importlib.util.find_spec("bmx")
    if package is None:
        sys.exit("launch.py: bmx is not installed (pip install -e . in the repository)")
    path = os.path.join(package.submodule_search_locations[0], "distributed.py")
    spec = importlib.util.spec_from_file_location("bmx_distributed", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


if __name__ == "__main__":
    sys.exit(_load_launcher().main())
