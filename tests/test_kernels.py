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
        for flavour in flavours(source.stem, name):
            assert re.search(rf"\.entry {name}_{flavour}\(", ptx), f"{name}_{flavour}"


def flavours(stem: str, name: str) -> tuple[str, ...]:
    """Every kernel has float and double flavours; those run on activations (all but the
    optimizer's, and LayerNorm's last pass, which adds float32 partial sums) also half and
    bfloat16 ones."""
    if stem == "adamw" or name == "layernorm_weight_accumulate":
        return ("float", "double")
    return ("float", "double", "half", "bfloat16")


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


def on_gpu(*arrays):
    return tuple(cupy.asarray(array) for array in arrays)


def rows(rng, dtype, columns):
    """Activations (3, 7, columns), an upstream gradient like them, and a row of columns."""
    x = (rng.normal(size=(3, 7, columns)) * 2).astype(dtype)
    dy = rng.normal(size=x.shape).astype(dtype)
    return x, dy, rng.normal(size=columns).astype(dtype), rng.normal(size=columns).astype(dtype)


def gelu_forward_pair(rng, dtype, columns):
    x, _, _, _ = rows(rng, dtype, columns)
    return [("gelu_forward", fused.gelu_forward(*on_gpu(x)), fused.gelu_forward(x))]


def gelu_backward_pair(rng, dtype, columns):
    x, dy, _, _ = rows(rng, dtype, columns)
    return [("gelu_backward", fused.gelu_backward(*on_gpu(x, dy)), fused.gelu_backward(x, dy))]


def layernorm_forward_pair(rng, dtype, columns):
    x, _, weight, bias = rows(rng, dtype, columns)
    gpu = fused.layernorm_forward(*on_gpu(x, weight, bias))
    cpu = fused.layernorm_forward(x, weight, bias)
    return [(f"layernorm_forward {name}", *pair)
            for name, pair in zip(("y", "mean", "rstd"), zip(gpu, cpu, strict=True), strict=True)]


def layernorm_backward_input_pair(rng, dtype, columns):
    x, dy, weight, bias = rows(rng, dtype, columns)
    _, mean, rstd = fused.layernorm_forward(x, weight, bias)
    return [("layernorm_backward_input",
             fused.layernorm_backward_input(*on_gpu(dy, x, weight, mean, rstd)),
             fused.layernorm_backward_input(dy, x, weight, mean, rstd))]


def layernorm_backward_weight_pair(rng, dtype, columns):
    """It adds into the gradients it is given (here not zero)."""
    x, dy, weight, bias = rows(rng, dtype, columns)
    _, mean, rstd = fused.layernorm_forward(x, weight, bias)
    dweight, dbias = weight.copy(), bias.copy()
    gdweight, gdbias = on_gpu(dweight, dbias)
    fused.layernorm_backward_weight(dy, x, mean, rstd, dweight, dbias)
    fused.layernorm_backward_weight(*on_gpu(dy, x, mean, rstd), gdweight, gdbias)
    return [("dweight", gdweight, dweight), ("dbias", gdbias, dbias)]


def logits_and_targets(rng, dtype, columns):
    x, _, _, _ = rows(rng, dtype, columns)
    logits = x.reshape(-1, columns) * 3
    targets = rng.integers(0, columns, size=logits.shape[0])
    targets[::4] = IGNORE
    return logits, targets


def cross_entropy_forward_pair(rng, dtype, columns):
    logits, targets = logits_and_targets(rng, dtype, columns)
    loss, probs = fused.cross_entropy_forward(logits, targets, IGNORE, 9.0)
    gloss, gprobs = fused.cross_entropy_forward(*on_gpu(logits, targets), IGNORE, 9.0)
    return [("loss", gloss, loss), ("probs", gprobs, probs)]


def cross_entropy_backward_pair(rng, dtype, columns):
    logits, targets = logits_and_targets(rng, dtype, columns)
    _, probs = fused.cross_entropy_forward(logits, targets, IGNORE, 9.0)
    return [("cross_entropy_backward",
             fused.cross_entropy_backward(*on_gpu(probs, targets), IGNORE, 9.0, dloss=0.5),
             fused.cross_entropy_backward(probs, targets, IGNORE, 9.0, dloss=0.5))]


def adamw_update_pair(rng, dtype, columns):
    size = 21 * columns
    grad = rng.normal(size=size).astype(dtype)
    param = rng.normal(size=size).astype(dtype)
    moments = [rng.normal(size=size).astype(dtype), rng.random(size=size).astype(dtype)]
    gparam, gm, gv = on_gpu(param, *moments)
    hyper = dict(lr=1e-2, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1, step=3,
                 grad_scale=0.6)
    fused.adamw_update(param, grad, *moments, **hyper)
    fused.adamw_update(gparam, *on_gpu(grad), gm, gv, **hyper)
    return [(f"adamw {name}", gpu, cpu)
            for name, gpu, cpu in zip(("param", "m", "v"), (gparam, gm, gv), (param, *moments),
                                      strict=True)]


# Each fused op: its CUDA result and its NumPy twin's on the same inputs, (name, gpu, cpu).
KERNEL_PAIRS = {
    "gelu_forward": gelu_forward_pair,
    "gelu_backward": gelu_backward_pair,
    "layernorm_forward": layernorm_forward_pair,
    "layernorm_backward_input": layernorm_backward_input_pair,
    "layernorm_backward_weight": layernorm_backward_weight_pair,
    "cross_entropy_forward": cross_entropy_forward_pair,
    "cross_entropy_backward": cross_entropy_backward_pair,
    "adamw_update": adamw_update_pair,
}


def test_every_launched_kernel_has_a_gpu_test():
    launched = {name for names in kernels_launched().values() for name in names}
    # layernorm_backward_weight launches two kernels: per-block partials, then their sum.
    tested = set(KERNEL_PAIRS) - {"layernorm_backward_weight"}
    assert launched == tested | {"layernorm_weight_partials", "layernorm_weight_accumulate"}


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("columns", [5, 64, 333, 1500])
@pytest.mark.parametrize("kernel", KERNEL_PAIRS)
def test_kernel_matches_its_numpy_twin(kernel, columns, dtype):
    pairs = KERNEL_PAIRS[kernel](np.random.default_rng(columns), dtype, columns)
    assert pairs
    for name, gpu_value, cpu_value in pairs:
        assert_same(gpu_value, cpu_value, dtype, name)


def low_dtypes():
    from mpipipe.precision import bfloat16, bfloat16_available

    return [np.dtype(np.float16)] + ([bfloat16()] if bfloat16_available() else [])


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("dtype", low_dtypes(), ids=lambda dtype: dtype.name)
@pytest.mark.parametrize("columns", [5, 64, 333, 1500])
def test_low_precision_kernels_match_numpy_twins(dtype, columns):
    """Both compute in float32 and round once, so they agree to about one unit of the type."""
    rng = np.random.default_rng(columns)
    x = (rng.normal(size=(3, 7, columns)) * 2).astype(dtype)
    dy = rng.normal(size=x.shape).astype(dtype)
    weight, bias = (rng.normal(size=columns).astype(dtype) for _ in range(2))
    gx, gdy, gweight, gbias = (cupy.asarray(a) for a in (x, dy, weight, bias))
    unit = float(np.finfo(dtype).eps)

    def close(gpu_value, cpu_value, name, expected_dtype=dtype):
        assert gpu_value.dtype == expected_dtype, name
        np.testing.assert_allclose(cupy.asnumpy(gpu_value).astype(np.float64),
                                   np.asarray(cpu_value).astype(np.float64),
                                   rtol=2 * unit, atol=4 * unit, err_msg=name)

    close(fused.gelu_forward(gx), fused.gelu_forward(x), "gelu_forward")
    close(fused.gelu_backward(gx, gdy), fused.gelu_backward(x, dy), "gelu_backward")
    y, mean, rstd = fused.layernorm_forward(x, weight, bias)
    gy, gmean, grstd = fused.layernorm_forward(gx, gweight, gbias)
    close(gy, y, "layernorm y")
    close(gmean, mean, "layernorm mean", np.float32)
    close(grstd, rstd, "layernorm rstd", np.float32)
    close(fused.layernorm_backward_input(gdy, gx, gweight, gmean, grstd),
          fused.layernorm_backward_input(dy, x, weight, mean, rstd), "layernorm dx")
    dweight, dbias = np.zeros(columns, np.float32), np.zeros(columns, np.float32)
    gdweight, gdbias = cupy.asarray(dweight), cupy.asarray(dbias)
    fused.layernorm_backward_weight(dy, x, mean, rstd, dweight, dbias)
    fused.layernorm_backward_weight(gdy, gx, gmean, grstd, gdweight, gdbias)
    np.testing.assert_allclose(cupy.asnumpy(gdweight), dweight, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(cupy.asnumpy(gdbias), dbias, rtol=1e-4, atol=1e-4)
    logits = x.reshape(-1, columns)
    targets = rng.integers(0, columns, size=logits.shape[0])
    targets[::4] = IGNORE
    gtargets = cupy.asarray(targets)
    loss, probs = fused.cross_entropy_forward(logits, targets, IGNORE, 9.0)
    gloss, gprobs = fused.cross_entropy_forward(cupy.asarray(logits), gtargets, IGNORE, 9.0)
    np.testing.assert_allclose(float(gloss), float(loss), rtol=1e-5)
    np.testing.assert_allclose(cupy.asnumpy(gprobs), probs, rtol=1e-5, atol=1e-7)
    close(fused.cross_entropy_backward(gprobs, gtargets, IGNORE, 9.0, 0.5, dtype),
          fused.cross_entropy_backward(probs, targets, IGNORE, 9.0, 0.5, dtype), "dlogits")


@pytest.mark.gpu
@needs_gpu
def test_cross_entropy_kernel_gives_nan_for_a_target_outside_the_vocabulary():
    logits = cupy.zeros((2, 4), dtype=cupy.float32)
    loss, _ = fused.cross_entropy_forward(logits, cupy.asarray([1, 4]), IGNORE, 2.0)
    assert np.isnan(float(loss))
