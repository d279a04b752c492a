"""The README's usage example runs as written and round-trips through export/import."""
import os
import re

import mxnet as mx
import numpy as np

README = os.path.join(os.path.dirname(__file__), os.pardir, "README.md")


def test_readme_python_example_runs(tmp_path, monkeypatch):
    with open(README) as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), re.S)
    assert blocks, "README.md has no python example"
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile(blocks[0], "README.md", "exec"), scope)
    x = mx.nd.random.normal(shape=(2, 3, 8, 8))
    np.testing.assert_array_equal(scope["block"](x).asnumpy(), scope["net"](x).asnumpy())
