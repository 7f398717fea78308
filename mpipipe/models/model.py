"""A model: the ordered list of layers every pipeline layout cuts into stages.

Parameters are keyed globally by (layer index, name). Each layer's initial
values come from np.random.default_rng([seed, layer index]), never from a
rank, so any pipeline layout builds the same model from the same seed.
Tied parameters (the LM head's weight) belong to the layer they are tied
to and are not listed again under the tying layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mpipipe.config.schema import ModelConfig
from mpipipe.errors import UsageError, did_you_mean
from mpipipe.layers.base import Layer, LayerCost, ParamKey
from mpipipe.models.bert import bert_layers
from mpipipe.models.gpt import gpt_layers
from mpipipe.tokens import special_tokens

BUILDERS = {"gpt": gpt_layers, "bert": bert_layers}


@dataclass
class Model:
    kind: str
    layers: list[Layer]
    vocab_size: int
    seq_len: int

    def param_shapes(self) -> dict[ParamKey, tuple[int, ...]]:
        """Shapes of the parameters each layer owns, keyed (layer index, name)."""
        return {
            (index, name): shape
            for index, layer in enumerate(self.layers)
            for name, shape in layer.param_shapes().items()
            if name not in layer.tied
        }

    def param_keys(self) -> list[ParamKey]:
        return list(self.param_shapes())

    def tied_keys(self) -> dict[ParamKey, ParamKey]:
        """(tying layer index, local name) -> the owner's (layer index, name)."""
        return {
            (index, name): owner
            for index, layer in enumerate(self.layers)
            for name, owner in layer.tied.items()
        }

    def init_params(
        self, seed: int, layer_indices: list[int] | None = None
    ) -> dict[ParamKey, np.ndarray]:
        """Initial float64 host values of the owned parameters of `layer_indices` (default all)."""
        if not (isinstance(seed, (int, np.integer)) and seed >= 0):
            raise UsageError(f"train.seed: the seed must be an integer >= 0, got {seed!r}")
        indices = range(len(self.layers)) if layer_indices is None else layer_indices
        params = {}
        for index in indices:
            rng = np.random.default_rng([seed, index])
            for name, value in self.layers[index].init_params(rng).items():
                params[(index, name)] = value
        return params

    def layer_arrays(self, arrays: dict[ParamKey, object], index: int) -> dict[str, object]:
        """Layer `index`'s view of a global dict (params or grads), tied names resolved."""
        layer = self.layers[index]
        return {name: arrays[layer.tied.get(name, (index, name))] for name in layer.param_shapes()}

    def costs(self, microbatch_size: int, itemsize: int) -> list[LayerCost]:
        return [layer.cost(microbatch_size, self.seq_len, itemsize) for layer in self.layers]


def build_model(config: ModelConfig, data_vocab: int | None = None) -> Model:
    """The model `config` describes; `data_vocab` is the data's token count (max id + 1)."""
    check_model_config(config, data_vocab)
    layers = BUILDERS[config.kind](config, config.vocab_size)
    return Model(config.kind, layers, config.vocab_size, config.seq_len)


def check_model_config(config: ModelConfig, data_vocab: int | None) -> None:
    if config.kind not in BUILDERS:
        raise UsageError(
            f"model.kind: unknown model {config.kind!r}{did_you_mean(config.kind, BUILDERS)} "
            f"(use one of {', '.join(map(repr, BUILDERS))})"
        )
    for key in ("vocab_size", "seq_len", "n_layer", "n_head", "d_model"):
        value = getattr(config, key)
        if not (isinstance(value, int) and value >= 1):
            raise UsageError(f"model.{key} must be a positive integer, got {value!r}")
    if not (isinstance(config.d_ff, int) and config.d_ff >= 0):
        raise UsageError(
            f"model.d_ff must be an integer >= 0 (0 means 4 * d_model), got {config.d_ff!r}"
        )
    if config.d_model % config.n_head:
        divisors = [n for n in range(1, config.d_model + 1) if config.d_model % n == 0]
        next_multiple = config.n_head * (config.d_model // config.n_head + 1)
        raise UsageError(
            f"model.d_model={config.d_model} is not a multiple of model.n_head={config.n_head}: "
            f"use model.n_head in {divisors} or model.d_model={next_multiple}"
        )
    if data_vocab is not None:
        needed = data_vocab + special_tokens(config.kind)
        if config.vocab_size < needed:
            extra = " (the data's tokens plus PAD and MASK)" if config.kind == "bert" else ""
            raise UsageError(
                f"model.vocab_size={config.vocab_size} is too small for data with "
                f"{data_vocab} token ids: {config.kind} needs model.vocab_size >= {needed}{extra}"
            )
