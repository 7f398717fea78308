"""The CUDA kernels: they compile, they ship in the wheel, and on a GPU they match their twins."""

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from mpipipe import fused
from mpipipe.fused import cuda

from cupy_device import cupy, needs_gpu

REPOSITORY = Path(__file__).resolve().parents[1]
KERNELS = REPOSITORY / "kernels"
KERNEL_FILES = sorted(KERNELS.glob("*.cu"))
NVCC = shutil.which("nvcc")
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc is not installed here")
IGNORE = -100


def compile_ptx(source: Path, output: Path) -> str:
    result = subprocess.run(
        [NVCC, "-ptx", "-std=c++17", "-o", str(output), str(source)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return output.read_text()


def kernels_launched() -> dict[str, set[str]]:
    """The kernel names mpipipe/fused/cuda.py asks each .cu file for."""
    text = Path(cuda.__file__).read_text()
    launched: dict[str, set[str]] = {}
    for stem, name in re.findall(r'_kernel\(\s*"(\w+)",\s*"(\w+)"', text):
        launched.setdefault(stem, set()).add(name)
    return launched


def test_every_launched_kernel_file_exists():
    assert set(kernels_launched()) == {path.stem for path in KERNEL_FILES}


@needs_nvcc
@pytest.mark.parametrize("source", KERNEL_FILES, ids=lambda path: path.name)
def test_kernel_compiles_and_exports_what_cuda_py_launches(source, tmp_path):
    ptx = compile_ptx(source, tmp_path / f"{source.stem}.ptx")
    for name in kernels_launched()[source.stem]:
        for flavour in ("float", "double"):
            assert re.search(rf"\.entry {name}_{flavour}\(", ptx), f"{name}_{flavour}"


@needs_nvcc
@pytest.mark.parametrize("source", KERNEL_FILES, ids=lambda path: path.name)
def test_source_handed_to_nvrtc_compiles_without_the_header(source, tmp_path):
    inlined = tmp_path / source.name
    inlined.write_text(cuda.kernel_source(source.stem))
    assert "#include" not in inlined.read_text()
    compile_ptx(inlined, tmp_path / f"{source.stem}.ptx")


def test_wheel_contains_the_kernel_sources(tmp_path):
    tree = tmp_path / "tree"
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        if (REPOSITORY / name).exists():
            tree.mkdir(exist_ok=True)
            shutil.copy(REPOSITORY / name, tree / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.ptx")
    shutil.copytree(REPOSITORY / "mpipipe", tree / "mpipipe", ignore=ignore)
    shutil.copytree(KERNELS, tree / "kernels", ignore=ignore)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "dist"), str(tree)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    for path in [*KERNEL_FILES, *KERNELS.glob("*.cuh")]:
        assert f"mpipipe/cuda_kernels/{path.name}" in shipped


TOLERANCE = {np.float32: dict(rtol=1e-4, atol=1e-5), np.float64: dict(rtol=1e-10, atol=1e-12)}


def assert_same(gpu_value, cpu_value, dtype, name):
    assert gpu_value.dtype == dtype, name
    np.testing.assert_allclose(cupy.asnumpy(gpu_value), cpu_value, err_msg=name, **TOLERANCE[dtype])


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("columns", [5, 64, 333, 1500])
def test_kernels_match_numpy_twins(dtype, columns):
    rng = np.random.default_rng(columns)
    x = (rng.normal(size=(3, 7, columns)) * 2).astype(dtype)
    dy = rng.normal(size=x.shape).astype(dtype)
    weight = rng.normal(size=columns).astype(dtype)
    bias = rng.normal(size=columns).astype(dtype)
    gx, gdy, gweight, gbias = (cupy.asarray(a) for a in (x, dy, weight, bias))

    assert_same(fused.gelu_forward(gx), fused.gelu_forward(x), dtype, "gelu_forward")
    assert_same(fused.gelu_backward(gx, gdy), fused.gelu_backward(x, dy), dtype, "gelu_backward")

    cpu_forward = fused.layernorm_forward(x, weight, bias)
    gpu_forward = fused.layernorm_forward(gx, gweight, gbias)
    for name, gpu_value, cpu_value in zip(("y", "mean", "rstd"), gpu_forward, cpu_forward,
                                          strict=True):
        assert_same(gpu_value, cpu_value, dtype, f"layernorm {name}")
    _, mean, rstd = cpu_forward
    gmean, grstd = cupy.asarray(mean), cupy.asarray(rstd)
    assert_same(
        fused.layernorm_backward_input(gdy, gx, gweight, gmean, grstd),
        fused.layernorm_backward_input(dy, x, weight, mean, rstd),
        dtype,
        "layernorm_backward_input",
    )
    dweight, dbias = weight.copy(), bias.copy()
    gdweight, gdbias = cupy.asarray(dweight), cupy.asarray(dbias)
    fused.layernorm_backward_weight(dy, x, mean, rstd, dweight, dbias)
    fused.layernorm_backward_weight(gdy, gx, gmean, grstd, gdweight, gdbias)
    assert_same(gdweight, dweight, dtype, "dweight")
    assert_same(gdbias, dbias, dtype, "dbias")

    logits = x.reshape(-1, columns) * 3
    targets = rng.integers(0, columns, size=logits.shape[0])
    targets[::4] = IGNORE
    gtargets = cupy.asarray(targets)
    loss, probs = fused.cross_entropy_forward(logits, targets, IGNORE, 9.0)
    gloss, gprobs = fused.cross_entropy_forward(cupy.asarray(logits), gtargets, IGNORE, 9.0)
    assert_same(gloss, loss, dtype, "loss")
    assert_same(gprobs, probs, dtype, "probs")
    assert_same(
        fused.cross_entropy_backward(gprobs, gtargets, IGNORE, 9.0, dloss=0.5),
        fused.cross_entropy_backward(probs, targets, IGNORE, 9.0, dloss=0.5),
        dtype,
        "cross_entropy_backward",
    )

    param = rng.normal(size=x.size).astype(dtype)
    moments = [rng.normal(size=x.size).astype(dtype), rng.random(size=x.size).astype(dtype)]
    gparam, gm, gv = (cupy.asarray(a) for a in (param, *moments))
    hyper = dict(lr=1e-2, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1, step=3,
                 grad_scale=0.6)
    fused.adamw_update(param, dy.ravel(), *moments, **hyper)
    fused.adamw_update(gparam, gdy.ravel(), gm, gv, **hyper)
    for name, gpu_value, cpu_value in zip(("param", "m", "v"), (gparam, gm, gv),
                                          (param, *moments), strict=True):
        assert_same(gpu_value, cpu_value, dtype, f"adamw {name}")


@pytest.mark.gpu
@needs_gpu
def test_cross_entropy_kernel_gives_nan_for_a_target_outside_the_vocabulary():
    logits = cupy.zeros((2, 4), dtype=cupy.float32)
    loss, _ = fused.cross_entropy_forward(logits, cupy.asarray([1, 4]), IGNORE, 2.0)
    assert np.isnan(float(loss))
