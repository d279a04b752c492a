#!/usr/bin/env python
"""Start an MXNet parameter-server job (scheduler, servers, workers) with the DMLC environment.

    python tools/launch.py -n 2 -s 1 python example/train_imagenet.py --kv-store dist_sync ...
    python tools/launch.py -n 4 -s 2 --launcher ssh -H hosts python example/train_imagenet.py ...

The logic is bmx.distributed (docs/distributed.md); --help lists the options.
"""
import sys

try:
    from bmx import distributed  # standard library only: this process never imports mxnet
except ModuleNotFoundError as err:
    if err.name != "bmx":
        raise
    sys.exit("launch.py: bmx is not installed (pip install -e . in the repository)")

if __name__ == "__main__":
    sys.exit(distributed.main())
