"""The tiny GPT that in-process tests train: 64 tokens, sequences of 8, width 16, float64."""

from mpipipe.config.schema import Config


def tiny_config(**overrides) -> Config:
    """Random data, no trace; `overrides` as section__key=value (model__n_layer=8)."""
    config = Config()
    config.model.vocab_size = 64
    config.model.seq_len = 8
    config.model.n_layer = 2
    config.model.n_head = 2
    config.model.d_model = 16
    config.data.source = "random"
    config.data.microbatch_size = 2
    config.runtime.dtype = "float64"
    config.runtime.trace = False
    for dotted, value in overrides.items():
        section, key = dotted.split("__")
        setattr(getattr(config, section), key, value)
    return config
