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
from mpipipe.layers.base import Layer, LayerCost, ParamKey
from mpipipe.models.bert import bert_layers
from mpipipe.models.gpt import gpt_layers
from mpipipe.tokens import special_tokens

# One per kind of mpipipe.tokens.MODEL_KINDS, which model.kind is checked against.
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
        """Initial float64 host values of the owned parameters of `layer_indices` (default all).

        `seed` is an integer >= 0 (train.seed's minimum).
        """
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

    def boundary_shapes(self, stage_layers: list[range], microbatch_size: int) -> list[tuple]:
        """Shape of the array leaving each stage (what the engine sizes its receives by)."""
        shape: tuple = (microbatch_size, self.seq_len)
        shapes = []
        for layers in stage_layers:
            for index in layers:
                shape = tuple(self.layers[index].output_shape(shape))
            shapes.append(shape)
        return shapes


def build_model(
    config: ModelConfig, data_vocab: int | None = None, recompute: str = "none"
) -> Model:
    """The model `config` describes; `data_vocab` is the data's token count (max id + 1);
    `recompute`: the blocks' recomputation policy (runtime.recompute).

    The config's values are trusted: `load_config` checks each key and
    `validate_config` the keys together (heads, vocabulary), and the data
    checks its own ids against model.vocab_size when it is opened.
    """
    if config.kind not in BUILDERS:
        raise ValueError(f"no model kind {config.kind!r}; the kinds are {', '.join(BUILDERS)}")
    assert data_vocab is None or data_vocab + special_tokens(config.kind) <= config.vocab_size, (
        f"{data_vocab} data token ids do not fit model.vocab_size = {config.vocab_size}"
    )
    layers = BUILDERS[config.kind](config, config.vocab_size, recompute)
    return Model(config.kind, layers, config.vocab_size, config.seq_len)
