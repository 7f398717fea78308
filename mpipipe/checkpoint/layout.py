"""Names inside a checkpoint file, its format version and the per-dataset checksum.

    /                         attributes: format, format_version, step, ...
    /model/<layer>/<param>    parameters, by global layer index and name
    /optim                    attributes: name (adamw | sgd), step_count
    /optim/<state>/<layer>/<param>
                              optimizer state (AdamW "m" and "v", SGD "momentum")

Every dataset carries a `crc32` attribute: CRC-32 of its bytes, little-endian,
C order. Names never mention a rank, so any layout reads any checkpoint.
"""

from __future__ import annotations

import zlib

import numpy as np

from mpipipe.layers.base import ParamKey

FORMAT_NAME = "mpipipe-checkpoint"
FORMAT_VERSION = 1
MODEL_GROUP = "model"
OPTIM_GROUP = "optim"
CHECKSUM_ATTRIBUTE = "crc32"


def param_dataset(key: ParamKey) -> str:
    layer, name = key
    return f"/{MODEL_GROUP}/{layer}/{name}"


def state_dataset(state: str, key: ParamKey) -> str:
    layer, name = key
    return f"/{OPTIM_GROUP}/{state}/{layer}/{name}"


def file_dtype(dtype) -> np.dtype:
    """The dtype a checkpoint stores: the run's float type, little-endian."""
    return np.dtype(dtype).newbyteorder("<")


def checksum(array: np.ndarray) -> int:
    """CRC-32 of the array's bytes as the file stores them (little-endian, C order)."""
    stored = np.ascontiguousarray(array, dtype=file_dtype(array.dtype))
    return zlib.crc32(stored.reshape(-1).view(np.uint8))
