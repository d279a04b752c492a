"""What example/reproduce.py and example/cifar10_table.py share about run directories and commands."""
import json
import os
import shlex


def shell(cmd):
    """The command as shell text; ``$VARIABLE`` arguments stay unquoted so that the shell expands them."""
    return " ".join(a if a.startswith("$") else shlex.quote(a) for a in cmd)


def read_state(run_dir):
    """The state.json of a train_imagenet.py output directory, or None if it has none yet."""
    try:
        with open(os.path.join(run_dir, "state.json")) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
