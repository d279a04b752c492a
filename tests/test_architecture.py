"""The two towers of docs/architecture.md: the deployment modules never import mxnet or a training
module, checked on the source (every import statement, also inside functions) and by importing
each one in a fresh process."""
import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "bmx")

# numpy and the compiled extension only (bmx.images adds OpenCV)
DEPLOYMENT = ("bmx._atomic", "bmx.datafiles", "bmx.images", "bmx.packed", "bmx.quantizer_math", "bmx.runtime",
              "bmx.symbol_json", "bmx.xnor")
TRAINING = ("bmx._library", "bmx.config", "bmx.data", "bmx.devices", "bmx.distillation", "bmx.losses",
            "bmx.memory_data", "bmx.model_io", "bmx.models", "bmx.nn", "bmx.optimizer_state", "bmx.optimizers",
            "bmx.precision", "bmx.quantizers", "bmx.recipes", "bmx.records", "bmx.run_checks", "bmx.run_snapshot",
            "bmx.steps", "bmx.summary", "bmx.training")
MEETING = ("bmx.convert", "bmx.onnx_export")


def module_files(name):
    """The source files of module or package ``name`` (none if it does not exist)."""
    path = os.path.join(ROOT, *name.split("."))
    if os.path.isdir(path):
        return sorted(os.path.join(d, f) for d, _, files in os.walk(path) for f in files if f.endswith(".py"))
    return [path + ".py"] if os.path.isfile(path + ".py") else []


def module_of(path):
    relative = os.path.relpath(path, ROOT)[:-len(".py")].split(os.sep)
    return ".".join(relative[:-1] if relative[-1] == "__init__" else relative)


def imported_modules(path):
    """Every module an import statement of the file names (relative imports resolved)."""
    package = module_of(path)
    if not path.endswith("__init__.py"):
        package = package.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def is_under(name, modules):
    return any(name == m or name.startswith(m + ".") for m in modules)


def test_every_bmx_module_is_in_one_tower():
    found = {".".join(module_of(p).split(".")[:2]) for p in module_files("bmx")} - {"bmx"}
    known = set(DEPLOYMENT + TRAINING + MEETING + ("bmx.distributed",))
    assert found <= known, f"modules in no tower (add them to this test and docs/architecture.md): {found - known}"
    assert set(DEPLOYMENT + MEETING) <= found


def test_the_scan_sees_relative_and_function_level_imports(tmp_path):
    """The static scan below cannot pass by missing imports: it finds both kinds in known files."""
    names = imported_modules(os.path.join(PACKAGE, "runtime", "ops", "layers.py"))
    assert "bmx.xnor" in names and "bmx.runtime.graph" in names
    names = imported_modules(os.path.join(PACKAGE, "convert", "verify.py"))
    assert "mxnet" in names and "bmx.model_io" in names


@pytest.mark.parametrize("path", [p for m in DEPLOYMENT for p in module_files(m)], ids=os.path.basename)
def test_deployment_sources_import_no_mxnet_and_no_training_module(path):
    for name in imported_modules(path):
        assert not is_under(name, ("mxnet",) + TRAINING + MEETING), f"{path} imports {name}"


@pytest.mark.parametrize("path", [p for m in TRAINING for p in module_files(m)], ids=os.path.basename)
def test_training_sources_do_not_import_the_converter(path):
    for name in imported_modules(path):
        assert not is_under(name, MEETING), f"{path} imports {name}"


def test_importing_a_deployment_module_loads_no_mxnet_and_no_training_module():
    """One fresh process imports bmx, then each deployment module in turn, and names the first one
    after which mxnet or a training module is in sys.modules (modules are never unloaded)."""
    forbidden = ("mxnet",) + TRAINING + MEETING
    code = ("import importlib, sys\n"
            f"forbidden = {forbidden!r}\n"
            "for module in sys.argv[1:]:\n"
            "    importlib.import_module(module)\n"
            "    bad = sorted(m for m in sys.modules if any(m == f or m.startswith(f + '.') for f in forbidden))\n"
            "    if bad:\n"
            "        sys.exit(f'import {module} loaded {bad}')\n"
            "print('clean')\n")
    modules = ("bmx",) + DEPLOYMENT + ("bmx.distributed",)
    result = subprocess.run([sys.executable, "-c", code, *modules], capture_output=True, text=True, timeout=120,
                            cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
    assert result.returncode == 0 and result.stdout.strip() == "clean", result.stderr


def test_training_names_load_on_first_use():
    code = ("import sys, bmx; assert 'mxnet' not in sys.modules; bmx.binary_layer_config; "
            "import mxnet as mx; print('mxnet' in sys.modules, hasattr(mx.nd, 'bmx_det_sign'), "
            "callable(bmx.summary), type(bmx.summary).__name__, 'radam' in mx.optimizer.Optimizer.opt_registry)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=ROOT))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True", "True", "function", "True"]
    code = "import bmx; bmx.nn; import mxnet as mx; import bmx.summary; print(hasattr(mx.nd, 'bmx_det_sign'), bmx.summary)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=ROOT))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("True <function summary")
