"""Whole GPT and BERT models: gradients against finite differences, the I/W split,
micro-batch additivity, masks, initialisation and configuration errors."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from mpipipe.config.schema import ModelConfig
from mpipipe.errors import UsageError
from mpipipe.layers import IGNORE_INDEX, Block, MicroBatch
from mpipipe.models import build_model, forward_backward, loss_and_grads

from gradcheck import finite_difference
from oneline import one_line_error

SMALL = ModelConfig(
    kind="gpt", vocab_size=13, seq_len=6, n_layer=2, n_head=2, d_model=8, d_ff=12, init_std=0.3
)
BATCH = 3
STEP = 1e-5
SAMPLES_PER_TENSOR = 6
GRADIENT_TOLERANCE = 1e-6


def gpt_batch(config: ModelConfig, batch: int = BATCH, seed: int = 0) -> MicroBatch:
    window = np.random.default_rng(seed).integers(0, config.vocab_size, (batch, config.seq_len + 1))
    return MicroBatch(window[:, :-1], window[:, 1:], None, float(batch * config.seq_len))


def bert_batch(config: ModelConfig, batch: int = BATCH, seed: int = 0) -> MicroBatch:
    """Real lengths vary, the rest is padding; a few real positions carry targets."""
    rng = np.random.default_rng(seed)
    pad, mask_token = config.vocab_size - 2, config.vocab_size - 1
    tokens = rng.integers(0, pad, (batch, config.seq_len))
    lengths = rng.integers(config.seq_len // 2, config.seq_len + 1, batch)
    lengths[0] = config.seq_len - 2
    attention_mask = np.arange(config.seq_len)[None, :] < lengths[:, None]
    tokens[~attention_mask] = pad
    targets = np.full_like(tokens, IGNORE_INDEX)
    for row, length in enumerate(lengths):
        chosen = rng.choice(length, max(1, length // 2), replace=False)
        targets[row, chosen] = tokens[row, chosen]
        tokens[row, chosen[0]] = mask_token
    return MicroBatch(tokens, targets, attention_mask, float((targets != IGNORE_INDEX).sum()))


CASES = {
    "gpt-tied": (SMALL, gpt_batch),
    "gpt-untied": (replace(SMALL, tie_embeddings=False), gpt_batch),
    "bert-tied": (replace(SMALL, kind="bert"), bert_batch),
}


@pytest.mark.parametrize("case", CASES)
def test_model_gradients_match_finite_differences(case):
    config, make_batch = CASES[case]
    model = build_model(config)
    params = model.init_params(seed=1)
    batch = make_batch(config)
    _, grads = loss_and_grads(model, params, batch)
    assert set(grads) == set(params) == set(model.param_keys())

    def loss() -> float:
        x = batch.tokens
        for index, layer in enumerate(model.layers):
            x, _ = layer.forward(model.layer_arrays(params, index), x, batch)
        return float(x)

    rng = np.random.default_rng(2)
    for key, array in params.items():
        flat, grad = array.reshape(-1), grads[key].reshape(-1)
        # The largest gradient entries plus random ones: every tensor gets a real check.
        indices = np.union1d(
            np.argsort(np.abs(grad))[-2:], rng.choice(flat.size, SAMPLES_PER_TENSOR // 2)
        )
        numeric = finite_difference(loss, array, indices, STEP)
        scale = max(np.abs(numeric).max(), np.abs(grad[indices]).max())
        assert scale > 0, key
        error = np.abs(grad[indices] - numeric).max() / scale
        assert error < GRADIENT_TOLERANCE, f"{key}: relative error {error}"


@pytest.mark.parametrize("case", CASES)
def test_model_split_backward_equals_full_backward(case):
    """Two micro-batches, F1 F2 B2 B1 against F1 F2 I2 I1 then every W half deferred."""
    config, make_batch = CASES[case]
    model = build_model(config)
    params = model.init_params(seed=1)
    batches = [make_batch(config, seed=3), make_batch(config, seed=4)]
    full = {key: np.zeros_like(value) for key, value in params.items()}
    split = {key: np.zeros_like(value) for key, value in params.items()}

    def forward_all(batch):
        x, caches = batch.tokens, []
        for index, layer in enumerate(model.layers):
            x, cache = layer.forward(model.layer_arrays(params, index), x, batch)
            caches.append(cache)
        return caches

    last = range(len(model.layers) - 1, -1, -1)
    all_caches = [forward_all(batch) for batch in batches]
    for caches in reversed(all_caches):
        dy = 1.0
        for index in last:
            layer = model.layers[index]
            args = model.layer_arrays(params, index), model.layer_arrays(full, index)
            dy = layer.backward(*args, dy, caches[index])

    all_caches = [forward_all(batch) for batch in batches]
    weight_caches = []
    for caches in reversed(all_caches):
        dy, wcaches = 1.0, []
        for index in last:
            dy, wcache = model.layers[index].backward_input(
                model.layer_arrays(params, index), dy, caches[index]
            )
            wcaches.append(wcache)
        weight_caches.append(wcaches)
    for wcaches in weight_caches:
        for index, wcache in zip(last, wcaches, strict=True):
            model.layers[index].backward_weight(model.layer_arrays(split, index), wcache)

    for key in params:
        assert np.array_equal(full[key], split[key]), key


@pytest.mark.parametrize("case", CASES)
def test_microbatch_losses_and_grads_add_up_to_the_whole_batch(case):
    """The pipeline's contract: micro-batches normalised by the global count sum to the
    whole batch's mean loss and gradient."""
    config, make_batch = CASES[case]
    model = build_model(config)
    params = model.init_params(seed=1)
    whole = make_batch(config, batch=4, seed=5)
    loss, grads = loss_and_grads(model, params, whole)
    summed = {key: np.zeros_like(value) for key, value in params.items()}
    summed_loss = 0.0
    for rows in (slice(0, 1), slice(1, 3), slice(3, 4)):
        mask = None if whole.attention_mask is None else whole.attention_mask[rows]
        part = MicroBatch(whole.tokens[rows], whole.targets[rows], mask, whole.loss_normalizer)
        summed_loss += forward_backward(model, params, summed, part)
    np.testing.assert_allclose(summed_loss, loss, rtol=1e-12)
    for key in params:
        np.testing.assert_allclose(
            summed[key], grads[key], rtol=1e-10, atol=1e-15, err_msg=str(key)
        )


def logits(model, params, batch) -> np.ndarray:
    """Forward up to the LM head (everything but the loss)."""
    x = batch.tokens
    for index, layer in enumerate(model.layers[:-1]):
        x, _ = layer.forward(model.layer_arrays(params, index), x, batch)
    return x


def test_gpt_logits_do_not_see_later_tokens():
    model = build_model(SMALL)
    params = model.init_params(seed=1)
    batch = gpt_batch(SMALL)
    changed_tokens = batch.tokens.copy()
    changed_tokens[:, 3:] = (changed_tokens[:, 3:] + 1) % SMALL.vocab_size
    before = logits(model, params, batch)
    after = logits(model, params, replace(batch, tokens=changed_tokens))
    np.testing.assert_allclose(after[:, :3], before[:, :3], rtol=0, atol=1e-13)
    assert not np.allclose(after[:, 3:], before[:, 3:])


def test_bert_outputs_at_real_positions_ignore_padding_tokens():
    config = replace(SMALL, kind="bert")
    model = build_model(config)
    params = model.init_params(seed=1)
    batch = bert_batch(config)
    real = batch.attention_mask
    assert not real.all()
    changed_tokens = batch.tokens.copy()
    changed_tokens[~real] = 0
    before = logits(model, params, batch)
    after = logits(model, params, replace(batch, tokens=changed_tokens))
    np.testing.assert_allclose(after[real], before[real], rtol=0, atol=1e-13)
    # BERT is bidirectional: a later real token changes an earlier position.
    changed_tokens = batch.tokens.copy()
    changed_tokens[0, 2] = (changed_tokens[0, 2] + 1) % (config.vocab_size - 2)
    assert not np.allclose(logits(model, params, replace(batch, tokens=changed_tokens))[0, 0],
                           before[0, 0])


def test_init_of_a_subset_equals_init_of_all():
    model = build_model(replace(SMALL, n_layer=4))
    everything = model.init_params(seed=7)
    for subset in ([0], [3, 1], [len(model.layers) - 3, 2]):
        part = model.init_params(seed=7, layer_indices=subset)
        assert {index for index, _ in part} == set(subset)
        for key, value in part.items():
            assert np.array_equal(value, everything[key]), key
    key = (1, "attn.qkv.weight")
    assert not np.array_equal(model.init_params(seed=8, layer_indices=[1])[key], everything[key])


def test_param_keys_shapes_and_tying():
    for config in (SMALL, replace(SMALL, kind="bert")):
        model = build_model(config)
        params = model.init_params(seed=0)
        head = len(model.layers) - 2
        assert model.tied_keys() == {(head, "weight"): (0, "wte")}
        assert (head, "weight") not in params
        assert list(params) == model.param_keys()
        shapes = model.param_shapes()
        assert all(params[key].shape == shapes[key] for key in params)
        assert all(value.dtype == np.float64 for value in params.values())
        arrays = model.layer_arrays(params, head)
        assert arrays["weight"] is params[(0, "wte")]
    untied = build_model(replace(SMALL, tie_embeddings=False))
    head = len(untied.layers) - 2
    assert untied.tied_keys() == {}
    assert untied.param_shapes()[(head, "weight")] == (SMALL.d_model, SMALL.vocab_size)


def test_gpt2_init_statistics():
    config = ModelConfig(d_model=128, n_head=4, n_layer=8, vocab_size=64, seq_len=16)
    model = build_model(config)
    params = model.init_params(seed=3)
    residual_std = config.init_std / math.sqrt(2 * config.n_layer)
    for key, value in params.items():
        _, name = key
        if name.endswith("proj.weight"):
            expected = residual_std
        elif name.endswith("weight") and value.ndim == 2 or name in ("wte", "wpe"):
            expected = config.init_std
        elif "ln" in name or key[0] == len(model.layers) - 3:
            expected = None
            ones = name.endswith("weight")
            assert np.array_equal(value, np.ones_like(value) if ones else np.zeros_like(value))
        else:
            expected = None
            assert name.endswith("bias") and not value.any(), key
        if expected is not None:
            assert abs(value.std() / expected - 1) < 0.1, key
            assert abs(value.mean()) < 4 * expected / math.sqrt(value.size), key


def test_loss_at_near_zero_init_is_log_vocab():
    config = replace(SMALL, init_std=1e-4)
    model = build_model(config)
    loss, _ = loss_and_grads(model, model.init_params(seed=0), gpt_batch(config))
    assert abs(loss - math.log(config.vocab_size)) < 1e-3


def test_float32_model_stays_float32():
    model = build_model(SMALL)
    params = {key: value.astype(np.float32) for key, value in model.init_params(seed=0).items()}
    loss, grads = loss_and_grads(model, params, gpt_batch(SMALL))
    _, grads64 = loss_and_grads(model, model.init_params(seed=0), gpt_batch(SMALL))
    assert all(grad.dtype == np.float32 for grad in grads.values())
    for key in grads:
        np.testing.assert_allclose(grads[key], grads64[key], rtol=1e-3, atol=1e-5, err_msg=str(key))


def test_block_cost_matches_the_standard_transformer_formula():
    """Forward ~ 24 N C^2 + 4 N T C flops for d_ff = 4C; backward ~ twice that."""
    channels, seq_len, microbatch = 512, 256, 4
    block = Block(channels, 8, 4 * channels, causal=True)
    cost = block.cost(microbatch, seq_len, 4)
    tokens = microbatch * seq_len
    expected = 24 * tokens * channels**2 + 4 * tokens * seq_len * channels
    assert abs(cost.forward_flops / expected - 1) < 0.03
    assert abs(cost.backward_flops / (2 * expected) - 1) < 0.03
    assert cost.param_bytes == 4 * sum(math.prod(s) for s in block.param_shapes().values())
    model = build_model(SMALL)
    assert len(model.costs(2, 8)) == len(model.layers)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"d_model": 10, "n_head": 4}, ["10 channels", "4 heads"]),
        ({"kind": "gtp"}, ["'gtp'", "gpt, bert"]),
    ],
)
def test_python_api_refuses_a_model_that_cannot_be_built(change, words):
    """Without load_config, an impossible ModelConfig is a plain ValueError, not a bad layer."""
    one_line_error(lambda: build_model(replace(ModelConfig(), **change)), words, error=ValueError)


def test_bert_embeds_and_scores_its_pad_and_mask_tokens_above_the_data_ids():
    config = replace(SMALL, kind="bert", vocab_size=258)  # 256 data ids, PAD 256, MASK 257
    model = build_model(config, data_vocab=256)
    params = model.init_params(seed=1)
    batch = bert_batch(config)
    assert (batch.tokens == 256).any() and (batch.tokens == 257).any()
    assert logits(model, params, batch).shape == (BATCH, config.seq_len, 258)
    _, grads = loss_and_grads(model, params, batch)
    # MASK stands at positions the loss reads: its embedding row moves the loss.
    assert np.abs(grads[(0, "wte")][257]).max() > 0


def test_sequences_longer_than_the_model_are_refused():
    model = build_model(SMALL)
    window = np.zeros((1, SMALL.seq_len + 2), dtype=np.int64)
    batch = MicroBatch(window[:, :-1], window[:, 1:], None, 1.0)
    with pytest.raises(UsageError, match="model.seq_len"):
        loss_and_grads(model, model.init_params(seed=0), batch)
