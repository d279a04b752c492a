#!/usr/bin/env python
"""Carries a training run's latest checkpoint to another machine in one compact file (bmx.run_snapshot).

    python tools/carry_run.py save RUN_DIR SNAPSHOT.npz      # its latest checkpoint
    python tools/carry_run.py restore SNAPSHOT.npz RUN_DIR   # then train with the same command + --resume

Float32 arrays travel as bfloat16 (half the size); see bmx/run_snapshot.py for what that changes.
"""
import argparse
import os
import sys

from bmx import packed
from bmx.run_snapshot import SnapshotError, restore, save


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("save", help="write RUN_DIR's current checkpoint to SNAPSHOT")
    p.add_argument("run_dir")
    p.add_argument("snapshot")
    p = sub.add_parser("restore", help="recreate a run directory from SNAPSHOT")
    p.add_argument("snapshot")
    p.add_argument("run_dir")
    args = parser.parse_args(argv)
    try:
        if args.command == "save":
            position = save(args.run_dir, args.snapshot)
            print(f"{args.snapshot}: {args.run_dir} {position}, {os.path.getsize(args.snapshot) / 2**20:.1f} MiB")
        else:
            position = restore(args.snapshot, args.run_dir)
            print(f"{args.run_dir}: restored {position}; continue with the run's command + --resume")
    except (SnapshotError, packed.PackedFormatError) as err:
        sys.exit(f"carry_run.py: error: {err}")


if __name__ == "__main__":
    main()
