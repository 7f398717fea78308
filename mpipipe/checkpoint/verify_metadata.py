"""A checkpoint's metadata checked against itself: counters, kinds, dtypes and shapes.

Checksums prove that each dataset holds the bytes that were written; these
checks prove that the attributes describe them: the step and data position
are non-negative integers that agree, the model kind, float type and
optimizer are ones mpipipe knows, the stored config builds a model whose
parameters have exactly the shapes of the datasets, and the optimizer holds
one state array per parameter. `ckpt verify` reports every problem, a resume
refuses the first, and a resume refuses any change of the model settings
that changes what the stored parameters mean.
"""

from __future__ import annotations

import numpy as np

from mpipipe.backend import DTYPES
from mpipipe.checkpoint.layout import MODEL_GROUP, OPTIM_GROUP, param_dataset, state_dataset
from mpipipe.config.load import load_sections
from mpipipe.config.schema import ModelConfig
from mpipipe.config.show import toml_value
from mpipipe.errors import UsageError
from mpipipe.models.model import build_model
from mpipipe.optim import SGD, AdamW
from mpipipe.tokens import MODEL_KINDS

# Model settings a resume must keep: each one changes the shapes or the meaning of the
# stored parameters (model.init_std only matters before the first step).
MEANING_KEYS = ("kind", "vocab_size", "seq_len", "n_layer", "n_head", "d_model", "d_ff",
                "tie_embeddings")
OPTIMIZER_STATES = {"adamw": AdamW.STATE_NAMES, "sgd": SGD.STATE_NAMES}


def stored_config(file, path: str):
    """The [model] and [train] sections of the config the checkpoint was written with."""
    text = file.attrs.get("config")
    if not isinstance(text, str):
        raise UsageError(f"checkpoint {path} holds no config attribute (a text of TOML)")
    return load_sections(text, ("model", "train"), f"checkpoint {path}'s stored config")


def model_changes(stored: ModelConfig, run: ModelConfig) -> list[tuple[str, object, object]]:
    """(key, stored value, run value) for every meaning-changing model setting that differs."""
    return [
        (f"model.{key}", getattr(stored, key), getattr(run, key))
        for key in MEANING_KEYS
        if getattr(stored, key) != getattr(run, key)
    ]


def refuse_model_changes(file, path: str, run: ModelConfig) -> None:
    """Raise one line naming the first model setting the run changed, with both values."""
    changes = model_changes(stored_config(file, path).model, run)
    if changes:
        key, stored, wanted = changes[0]
        others = f" (and {len(changes) - 1} more model setting(s))" if len(changes) > 1 else ""
        raise UsageError(
            f"checkpoint {path} was trained with {key} = {toml_value(stored)}, the run has "
            f"{key} = {toml_value(wanted)}{others}: the stored parameters mean something else "
            f"under it; resume with {key} = {toml_value(stored)}, or start a new run without "
            "--resume"
        )


def metadata_problems(file, path: str) -> list[str]:
    """One line per way the file's metadata contradicts itself or names something unknown."""
    problems: list[str] = []
    attrs = file.attrs
    step = _count(attrs, "step", 0, problems)
    _count(attrs, "seed", 0, problems)
    per_step = _count(attrs, "samples_per_step", 1, problems)
    next_sample = _count(attrs, "next_sample", 0, problems)
    if None not in (step, per_step, next_sample) and next_sample != step * per_step:
        problems.append(f"next_sample = {next_sample} is not step x samples_per_step = "
                        f"{step} x {per_step}")
    datasets = _datasets(file)
    _check_dtype(attrs, datasets, problems)
    layers = _check_model(file, path, datasets, problems)
    _check_stage_layers(attrs, layers, problems)
    _check_optimizer(file, datasets, step, problems)
    return problems


def _count(attrs, name: str, least: int, problems: list[str]) -> int | None:
    value = attrs.get(name)
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(())[()]
    shown = "missing" if value is None else repr(_plain(value))
    is_integer = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    if not is_integer or value < least:
        problems.append(f"attribute {name} is {shown}, not an integer of {least} or more")
        return None
    return int(value)


def _plain(value):
    """A NumPy scalar or array as the Python value a person would write."""
    return value.tolist() if isinstance(value, (np.generic, np.ndarray)) else value


def _datasets(file) -> dict[str, object]:
    found = {}
    for group in (MODEL_GROUP, OPTIM_GROUP):
        if group in file:
            file[group].visititems(
                lambda _name, item: found.update({item.name: item}) if hasattr(item, "shape")
                else None
            )
    return found


def _check_dtype(attrs, datasets: dict, problems: list[str]) -> None:
    dtype = attrs.get("dtype")
    if dtype not in DTYPES:
        problems.append(f"attribute dtype is {dtype!r}, not one of {', '.join(DTYPES)}")
        return
    odd = sorted(name for name, dataset in datasets.items() if dataset.dtype != np.dtype(dtype))
    if odd:
        problems.append(f"dataset {odd[0]} is {datasets[odd[0]].dtype}, the file says {dtype} "
                        f"({len(odd)} such dataset(s))")


def _check_model(file, path: str, datasets: dict, problems: list[str]) -> int | None:
    """Check kind, seed and shapes against the stored config; returns the model's layer count."""
    attrs = file.attrs
    kind = attrs.get("model")
    if not isinstance(kind, str):
        problems.append(f"attribute model is {kind!r}, not a model kind")
        return None
    stored = {name: dataset.shape for name, dataset in datasets.items()
              if name.startswith(f"/{MODEL_GROUP}/")}
    layers = _check_shapes(file, path, kind, stored, problems)
    total = sum(int(np.prod(shape)) for shape in stored.values())
    if attrs.get("parameters") != total:
        problems.append(f"attribute parameters is {_plain(attrs.get('parameters'))!r}, the "
                        f"datasets under /{MODEL_GROUP} hold {total}")
    return layers


def _check_shapes(file, path: str, kind: str, stored: dict, problems: list[str]) -> int | None:
    attrs = file.attrs
    try:
        config = stored_config(file, path)
    except UsageError as error:
        problems.append(str(error))
        return None
    if "seed" in attrs and attrs["seed"] != config.train.seed:
        problems.append(f"attribute seed is {_plain(attrs['seed'])}, the stored config says "
                        "train.seed = "
                        f"{config.train.seed}")
    if kind not in MODEL_KINDS:
        return None  # a model of the caller's own: its shapes are its own business
    if config.model.kind != kind:
        problems.append(f"attribute model is {kind!r}, the stored config says model.kind = "
                        f"{config.model.kind!r}")
        return None
    model = build_model(config.model)
    needed = {param_dataset(key): tuple(shape) for key, shape in model.param_shapes().items()}
    wrong = sorted(name for name in needed if stored.get(name) != needed[name])
    extra = sorted(set(stored) - set(needed))
    if wrong:
        name = wrong[0]
        held = "is missing" if name not in stored else f"has shape {stored[name]}"
        problems.append(f"dataset {name} {held}, the stored config's model needs {needed[name]} "
                        f"({len(wrong)} such dataset(s))")
    if extra:
        problems.append(f"dataset {extra[0]} is not a parameter of the stored config's model "
                        f"({len(extra)} such dataset(s))")
    return len(model.layers)


def _check_stage_layers(attrs, layers: int | None, problems: list[str]) -> None:
    spans = np.asarray(attrs.get("stage_layers", []))
    if spans.ndim != 2 or spans.shape[1:] != (2,) or not len(spans) or spans.dtype.kind != "i":
        problems.append(f"attribute stage_layers has shape {spans.shape}, not (stages, 2) "
                        "integers")
        return
    starts, stops = spans[:, 0], spans[:, 1]
    contiguous = starts[0] == 0 and (starts[1:] == stops[:-1]).all() and (stops > starts).all()
    if not contiguous or (layers is not None and stops[-1] != layers):
        problems.append(f"attribute stage_layers {spans.tolist()} does not cut layers "
                        f"0..{'?' if layers is None else layers - 1} into consecutive stages")


def _check_optimizer(file, datasets: dict, step: int | None, problems: list[str]) -> None:
    if OPTIM_GROUP not in file:
        problems.append(f"the file holds no optimizer state (/{OPTIM_GROUP} is missing)")
        return
    optim = file[OPTIM_GROUP].attrs
    name = optim.get("name")
    if name not in OPTIMIZER_STATES:
        problems.append(f"/{OPTIM_GROUP} attribute name is {name!r}, not one of "
                        f"{', '.join(OPTIMIZER_STATES)}")
        return
    step_count = _count(optim, "step_count", 0, problems)
    if None not in (step, step_count) and step_count > step:
        problems.append(f"/{OPTIM_GROUP} step_count = {step_count} is more than step = {step}")
    params = {name: dataset.shape for name, dataset in datasets.items()
              if name.startswith(f"/{MODEL_GROUP}/")}
    needed = {
        state_dataset(state, _key(param)): shape
        for param, shape in params.items()
        for state in OPTIMIZER_STATES[name]
    }
    states = {name: dataset.shape for name, dataset in datasets.items()
              if name.startswith(f"/{OPTIM_GROUP}/")}
    wrong = sorted(path for path in needed if states.get(path) != needed[path])
    if wrong:
        held = "is missing" if wrong[0] not in states else f"has shape {states[wrong[0]]}"
        problems.append(f"{name} state {wrong[0]} {held}, its parameter has shape "
                        f"{needed[wrong[0]]} ({len(wrong)} such dataset(s))")
    extra = sorted(set(states) - set(needed))
    if extra:
        problems.append(f"{extra[0]} is no {name} state of a parameter in the file "
                        f"({len(extra)} such dataset(s))")


def _key(dataset_path: str) -> tuple[str, str]:
    """'/model/3/attn.qkv.weight' -> ('3', 'attn.qkv.weight'), as state_dataset takes it."""
    _, _, layer, name = dataset_path.split("/", 3)
    return layer, name
