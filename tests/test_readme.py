"""The README's python examples run as written: the usage example round-trips through
export/import, and the deployment example runs the shipped packed model."""
import os
import re

import mxnet as mx
import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)
README = os.path.join(ROOT, "README.md")


def python_block(marker):
    with open(README) as f:
        blocks = [b for b in re.findall(r"```python\n(.*?)```", f.read(), re.S) if marker in b]
    assert len(blocks) == 1, f"README.md should have one python example with {marker!r}"
    return blocks[0]


def test_readme_python_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile(python_block("bmx.export(net"), "README.md", "exec"), scope)
    x = mx.nd.random.normal(shape=(2, 3, 8, 8))
    np.testing.assert_array_equal(scope["block"](x).asnumpy(), scope["net"](x).asnumpy())


def test_readme_deployment_example_runs(monkeypatch):
    """Run from the repository root, as the README's commands are; ``images`` is the one name it
    leaves to the reader."""
    monkeypatch.chdir(ROOT)
    images = np.random.default_rng(0).normal(size=(3, 3, 32, 32)).astype(np.float32)
    scope = {"images": images}
    exec(compile(python_block("bmx.runtime.load("), "README.md", "exec"), scope)
    logits = np.asarray(scope["logits"])
    assert logits.shape == (3, 10) and np.isfinite(logits).all()
    np.testing.assert_array_equal(logits, scope["model"](images))
