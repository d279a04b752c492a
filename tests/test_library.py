"""Finding, checking and loading the native operator library (bmx/_library.py)."""
import os
import shutil
import subprocess
import sys
import textwrap

import mxnet as mx
import pytest

import bmx
from bmx import _library


def test_library_is_loaded_and_ops_registered():
    assert _library.load() == _library.library_path()  # a second load is a no-op returning the path
    for op in ("bmx_det_sign", "bmx_approx_sign", "bmx_weight_sign", "bmx_quantize_act", "bmx_quantize_weight"):
        assert _library.is_registered(op), op
    assert not _library.is_registered("bmx_no_such_op")


def test_library_path_default_and_override(monkeypatch, tmp_path):
    monkeypatch.delenv(_library.LIBRARY_ENV, raising=False)
    default = _library.library_path()
    assert default == os.path.join(os.path.dirname(os.path.abspath(bmx.__file__)), "_native", "libbmx_ops.so")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(_library.LIBRARY_ENV, "rel/lib.so")
    assert _library.library_path() == str(tmp_path / "rel" / "lib.so")


def test_check_version():
    _library.check_version("/x/libbmx_ops.so", "1.9.1", "1.9.1")
    with pytest.raises(ImportError) as info:
        _library.check_version("/x/libbmx_ops.so", "1.8.0", "1.9.1")
    message = str(info.value)
    assert isinstance(info.value, _library.NativeLibraryError)
    assert "1.8.0" in message and "1.9.1" in message and "/x/libbmx_ops.so" in message
    assert "built for mxnet 1.8.0" in message and "mxnet 1.9.1 is installed" in message


@pytest.fixture
def unloaded(monkeypatch):
    """Pretend the library was not loaded yet (restored afterwards)."""
    monkeypatch.setattr(_library, "_loaded_path", None)
    return monkeypatch


def test_load_missing_library_names_the_path(unloaded, tmp_path):
    path = str(tmp_path / "missing" / "libbmx_ops.so")
    unloaded.setenv(_library.LIBRARY_ENV, path)
    with pytest.raises(_library.NativeLibraryError, match=f"not found at {path}"):
        _library.load()


def test_load_foreign_or_broken_file_says_so(unloaded, tmp_path):
    foreign = bmx._xnor.__file__  # a shared object, but not bmx's operator library
    unloaded.setenv(_library.LIBRARY_ENV, foreign)
    with pytest.raises(_library.NativeLibraryError, match=f"{foreign} is not a bmx operator library"):
        _library.load()
    broken = tmp_path / "libbmx_ops.so"
    broken.write_bytes(b"\x7fELF not really")
    unloaded.setenv(_library.LIBRARY_ENV, str(broken))
    with pytest.raises(_library.NativeLibraryError, match=f"cannot open the operator library {broken}"):
        _library.load()


def test_load_rejects_a_library_built_for_another_mxnet(unloaded):
    unloaded.delenv(_library.LIBRARY_ENV, raising=False)
    built_for = mx.__version__  # the library in the checkout was built for the running mxnet
    unloaded.setattr(mx, "__version__", "0.0.1")
    with pytest.raises(_library.NativeLibraryError) as info:
        _library.load()
    message = str(info.value)
    assert f"built for mxnet {built_for}" in message and "mxnet 0.0.1 is installed" in message
    assert _library.library_path() in message


FAKE_LIBRARY = 'const char* bmx_built_for_mxnet(void) { return "1.5.0"; }\n'


def test_import_bmx_fails_clearly_in_a_fresh_process(tmp_path):
    """`bmx.load_library()` (what the training names call) raises ImportError naming the path (missing library) or both versions (library
    built for another mxnet), and succeeds once BMX_OPS_LIBRARY points at the real library."""
    if shutil.which("cc") is None:
        pytest.skip("no C compiler to build a library stamped with another mxnet version")
    source = tmp_path / "fake.c"
    source.write_text(FAKE_LIBRARY)
    fake = tmp_path / "libfake_ops.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(fake), str(source)], check=True)
    missing = tmp_path / "nowhere" / "libbmx_ops.so"
    real = _library.library_path()
    script = textwrap.dedent(f"""
        import os
        for path in [{str(missing)!r}, {str(fake)!r}, {real!r}]:
            os.environ["BMX_OPS_LIBRARY"] = path
            try:
                import bmx
                bmx.load_library()
            except ImportError as err:
                print("IMPORT-ERROR", type(err).__name__, err)
            else:
                print("IMPORTED", bmx._library._loaded_path, hasattr(__import__("mxnet").nd, "bmx_det_sign"))
    """)
    env = dict(os.environ)
    env.pop(_library.LIBRARY_ENV, None)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            cwd=str(tmp_path), env=env)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith(("IMPORT-ERROR", "IMPORTED"))]
    assert len(lines) == 3, result.stdout
    assert lines[0].startswith("IMPORT-ERROR NativeLibraryError") and str(missing) in lines[0]
    assert "not found" in lines[0]
    assert lines[1].startswith("IMPORT-ERROR NativeLibraryError") and str(fake) in lines[1]
    assert "built for mxnet 1.5.0" in lines[1] and f"mxnet {mx.__version__} is installed" in lines[1]
    assert lines[2] == f"IMPORTED {real} True"


def _op_threads_in_subprocess(omp_num_threads):
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    if omp_num_threads is not None:
        env["OMP_NUM_THREADS"] = omp_num_threads
    code = ("import ctypes, bmx; bmx.load_library(); "
            "print(ctypes.CDLL(bmx._library.library_path()).bmx_op_threads())")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_native_ops_use_every_usable_core_by_default():
    # MXNet lowers the OpenMP default of its engine threads to 1; the ops must not inherit that.
    assert _op_threads_in_subprocess(None) == len(os.sched_getaffinity(0))


@pytest.mark.slow
def test_native_ops_honour_omp_num_threads():
    assert _op_threads_in_subprocess("3") == 3
