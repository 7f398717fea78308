"""Every layer against central finite differences in float64, its I/W split against
its full backward, attention masks against perturbation, and PyTorch where installed."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mpipipe.layers import (
    GELU,
    IGNORE_INDEX,
    MLP,
    Attention,
    Block,
    CrossEntropy,
    Embedding,
    LayerNorm,
    Linear,
    LMHead,
    MicroBatch,
    apply_recompute,
)

from gradcheck import finite_difference

BATCH, TIME, CHANNELS, HEADS, VOCAB = 2, 5, 8, 2, 11
GRADIENT_TOLERANCE = 1e-6
STEP = 1e-5
SAMPLES = 30


def context(targets=None, attention_mask=None, loss_normalizer: float = 1.0) -> MicroBatch:
    return MicroBatch(None, targets, attention_mask, loss_normalizer)


def padding_mask() -> np.ndarray:
    """Sequence 0 has 3 real tokens, sequence 1 is full."""
    mask = np.ones((BATCH, TIME), dtype=bool)
    mask[0, 3:] = False
    return mask


def random_params(layer, seed: int = 0, scale: float = 0.5) -> dict[str, np.ndarray]:
    """Values far from the usual init, so every path (sharp softmax, LN scale) matters."""
    rng = np.random.default_rng(seed)
    return {name: rng.normal(0.0, scale, shape) for name, shape in layer.param_shapes().items()}


def random_input(*shape, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape)


def sample_indices(size: int, rng: np.random.Generator) -> np.ndarray:
    return np.arange(size) if size <= SAMPLES else rng.choice(size, SAMPLES, replace=False)


def relative_error(analytic: np.ndarray, numeric: np.ndarray) -> float:
    scale = max(np.abs(numeric).max(), np.abs(analytic).max())
    return 0.0 if scale == 0 else float(np.abs(analytic - numeric).max() / scale)


def check_gradients(layer, params: dict, x, ctx: MicroBatch, seed: int = 2) -> None:
    """Backward of <y, R> for a random R against finite differences, on x (when it is
    a float array) and every parameter."""
    rng = np.random.default_rng(seed)
    y, cache = layer.forward(params, x, ctx)
    projection = rng.normal(size=np.shape(y))
    grads = {name: np.zeros_like(value) for name, value in params.items()}
    dx = layer.backward(params, grads, projection, cache)

    def objective() -> float:
        return float(np.sum(layer.forward(params, x, ctx)[0] * projection))

    checked = {"x": (x, dx)} if np.issubdtype(np.asarray(x).dtype, np.floating) else {}
    checked.update({name: (params[name], grads[name]) for name in params})
    assert len(checked) > 0
    for name, (array, analytic) in checked.items():
        indices = sample_indices(array.size, rng)
        numeric = finite_difference(objective, array, indices, STEP)
        error = relative_error(analytic.reshape(-1)[indices], numeric)
        assert error < GRADIENT_TOLERANCE, f"{type(layer).__name__} d{name}: relative error {error}"


def check_split_matches_full(layer, params: dict, inputs: list, ctx: MicroBatch) -> None:
    """Two micro-batches: F1 F2 B2 B1 (full backward) against F1 F2 I2 I1 W2 W1, where
    the deferred W halves must not see anything the later I halves did."""
    rng = np.random.default_rng(3)
    full_grads = {name: np.zeros_like(value) for name, value in params.items()}
    split_grads = {name: np.zeros_like(value) for name, value in params.items()}
    upstream = []
    for x in inputs:
        shape = np.shape(layer.forward(params, x, ctx)[0])
        upstream.append(rng.normal(size=shape))

    caches = [layer.forward(params, x, ctx)[1] for x in inputs]
    full_dx = [
        layer.backward(params, full_grads, upstream[index], caches[index])
        for index in reversed(range(len(inputs)))
    ]
    caches = [layer.forward(params, x, ctx)[1] for x in inputs]
    halves = [
        layer.backward_input(params, upstream[index], caches[index])
        for index in reversed(range(len(inputs)))
    ]
    for _, wcache in halves:
        layer.backward_weight(split_grads, wcache)

    for full, (split, _) in zip(full_dx, halves, strict=True):
        assert (full is None and split is None) or np.array_equal(full, split)
    for name in params:
        assert np.array_equal(full_grads[name], split_grads[name]), name


def two_inputs(*shape) -> list[np.ndarray]:
    return [random_input(*shape, seed=10), random_input(*shape, seed=11)]


def tokens(seed: int = 4) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, (BATCH, TIME))


def targets_with_ignored(seed: int = 5) -> np.ndarray:
    targets = np.random.default_rng(seed).integers(0, VOCAB, (BATCH, TIME))
    targets[0, :2] = IGNORE_INDEX
    targets[1, 4] = IGNORE_INDEX
    return targets


# Every layer with a float input: (layer, context, input shape).
FLOAT_INPUT_LAYERS = {
    "linear": (lambda: Linear(CHANNELS, 3 * CHANNELS), context(), (BATCH, TIME, CHANNELS)),
    "layernorm": (lambda: LayerNorm(CHANNELS), context(), (BATCH, TIME, CHANNELS)),
    "gelu": (lambda: GELU(CHANNELS), context(), (BATCH, TIME, CHANNELS)),
    "attention-causal": (
        lambda: Attention(CHANNELS, HEADS, causal=True),
        context(),
        (BATCH, TIME, CHANNELS),
    ),
    "attention-padding": (
        lambda: Attention(CHANNELS, HEADS, causal=False),
        context(attention_mask=padding_mask()),
        (BATCH, TIME, CHANNELS),
    ),
    "mlp": (lambda: MLP(CHANNELS, 4 * CHANNELS), context(), (BATCH, TIME, CHANNELS)),
    "block-causal": (
        lambda: Block(CHANNELS, HEADS, 4 * CHANNELS, causal=True),
        context(),
        (BATCH, TIME, CHANNELS),
    ),
    "block-padding": (
        lambda: Block(CHANNELS, HEADS, 4 * CHANNELS, causal=False),
        context(attention_mask=padding_mask()),
        (BATCH, TIME, CHANNELS),
    ),
    **{
        f"block-{name}-recompute-{policy}": (
            lambda causal=causal, policy=policy: apply_recompute(
                Block(CHANNELS, HEADS, 4 * CHANNELS, causal=causal), policy
            ),
            ctx,
            (BATCH, TIME, CHANNELS),
        )
        for name, causal, ctx in [
            ("causal", True, context()),
            ("padding", False, context(attention_mask=padding_mask())),
        ]
        for policy in ("attention", "block")
    },
    "lm-head-untied": (
        lambda: LMHead(CHANNELS, VOCAB, tie_embeddings=False),
        context(),
        (BATCH, TIME, CHANNELS),
    ),
    "cross-entropy": (
        lambda: CrossEntropy(VOCAB),
        context(targets=targets_with_ignored(), loss_normalizer=7.0),
        (BATCH, TIME, VOCAB),
    ),
}


@pytest.mark.parametrize("case", FLOAT_INPUT_LAYERS)
def test_gradients_match_finite_differences(case):
    build, ctx, shape = FLOAT_INPUT_LAYERS[case]
    layer = build()
    check_gradients(layer, random_params(layer), random_input(*shape), ctx)


@pytest.mark.parametrize("case", FLOAT_INPUT_LAYERS)
def test_split_backward_equals_full_backward(case):
    build, ctx, shape = FLOAT_INPUT_LAYERS[case]
    layer = build()
    check_split_matches_full(layer, random_params(layer), two_inputs(*shape), ctx)


@pytest.mark.parametrize("case", FLOAT_INPUT_LAYERS)
def test_output_shape_matches_forward(case):
    build, ctx, shape = FLOAT_INPUT_LAYERS[case]
    layer = build()
    y, _ = layer.forward(random_params(layer), random_input(*shape), ctx)
    assert layer.output_shape(shape) == np.shape(y)


def test_embedding_output_shape_matches_forward():
    embedding = Embedding(VOCAB, TIME, CHANNELS)
    y, _ = embedding.forward(random_params(embedding), tokens(), context())
    assert embedding.output_shape((BATCH, TIME)) == y.shape


def tied_head_params() -> dict[str, np.ndarray]:
    """The tied head gets the embedding's wte (V, C) as its weight."""
    return {"weight": np.random.default_rng(6).normal(0.0, 0.5, (VOCAB, CHANNELS))}


def test_tied_head_gradients_and_split():
    head = LMHead(CHANNELS, VOCAB, tie_embeddings=True)
    assert head.tied == {"weight": (0, "wte")}
    assert head.param_shapes() == {"weight": (VOCAB, CHANNELS)}
    assert head.init_params(np.random.default_rng(0)) == {}
    check_gradients(head, tied_head_params(), random_input(BATCH, TIME, CHANNELS), context())
    check_split_matches_full(head, tied_head_params(), two_inputs(BATCH, TIME, CHANNELS), context())


def test_tied_head_equals_untied_head_with_transposed_weight():
    tied, untied = LMHead(CHANNELS, VOCAB, True), LMHead(CHANNELS, VOCAB, False)
    wte = tied_head_params()["weight"]
    x = random_input(BATCH, TIME, CHANNELS)
    y_tied, _ = tied.forward({"weight": wte}, x, context())
    y_untied, _ = untied.forward({"weight": wte.T.copy()}, x, context())
    np.testing.assert_allclose(y_tied, y_untied, rtol=1e-14, atol=1e-14)


def test_embedding_gradients_and_split():
    embedding = Embedding(VOCAB, TIME + 2, CHANNELS)
    ids = tokens()
    ids[0, :3] = ids[1, 0]  # a repeated token must accumulate, not overwrite
    check_gradients(embedding, random_params(embedding), ids, context())
    check_split_matches_full(embedding, random_params(embedding), [ids, tokens(7)], context())
    assert embedding.backward_input(random_params(embedding), None, ids)[0] is None


def test_embedding_looks_up_rows_and_positions():
    embedding = Embedding(VOCAB, TIME, CHANNELS)
    params = random_params(embedding)
    ids = tokens()
    y, _ = embedding.forward(params, ids, context())
    for b in range(BATCH):
        for t in range(TIME):
            np.testing.assert_array_equal(y[b, t], params["wte"][ids[b, t]] + params["wpe"][t])


def test_cross_entropy_is_normalised_mean_over_counted_targets():
    logits = random_input(BATCH, TIME, VOCAB)
    targets = targets_with_ignored()
    counted = targets != IGNORE_INDEX
    loss, _ = CrossEntropy(VOCAB).forward({}, logits, context(targets, None, 13.0))
    log_probs = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    rows, columns = np.nonzero(counted)
    expected = -log_probs[rows, columns, targets[rows, columns]].sum() / 13.0
    assert np.ndim(loss) == 0
    np.testing.assert_allclose(float(loss), expected, rtol=1e-12)


def outputs(layer, params, x, ctx):
    return layer.forward(params, x, ctx)[0]


@pytest.mark.parametrize("step", [0, 2, 3])
def test_causal_output_ignores_later_positions(step):
    attention = Attention(CHANNELS, HEADS, causal=True)
    params = random_params(attention)
    x = random_input(BATCH, TIME, CHANNELS)
    changed = x.copy()
    changed[:, step + 1 :] += random_input(BATCH, TIME - step - 1, CHANNELS, seed=9)
    before, after = outputs(attention, params, x, context()), outputs(
        attention, params, changed, context()
    )
    np.testing.assert_allclose(after[:, : step + 1], before[:, : step + 1], rtol=0, atol=1e-14)
    assert not np.allclose(after[:, step + 1 :], before[:, step + 1 :])


def test_padding_mask_hides_padded_keys():
    attention = Attention(CHANNELS, HEADS, causal=False)
    params = random_params(attention)
    mask = padding_mask()
    ctx = context(attention_mask=mask)
    x = random_input(BATCH, TIME, CHANNELS)
    changed = x.copy()
    changed[~mask] += 3.0
    before, after = outputs(attention, params, x, ctx), outputs(attention, params, changed, ctx)
    np.testing.assert_allclose(after[mask], before[mask], rtol=0, atol=1e-14)
    # Bidirectional: an early real position does see a later real token.
    changed = x.copy()
    changed[0, 2] += 3.0
    assert not np.allclose(outputs(attention, params, changed, ctx)[0, 0], before[0, 0])


def test_attention_matches_a_direct_per_head_loop():
    attention = Attention(CHANNELS, HEADS, causal=False)
    params = random_params(attention)
    mask = padding_mask()
    x = random_input(BATCH, TIME, CHANNELS)
    y = outputs(attention, params, x, context(attention_mask=mask))
    head_size = CHANNELS // HEADS
    qkv = x @ params["qkv.weight"] + params["qkv.bias"]
    merged = np.zeros_like(x)
    for b in range(BATCH):
        for h in range(HEADS):
            columns = slice(h * head_size, (h + 1) * head_size)
            q = qkv[b, :, columns]
            k = qkv[b, :, CHANNELS:][:, columns]
            v = qkv[b, :, 2 * CHANNELS :][:, columns]
            for t in range(TIME):
                weights = np.array(
                    [math.exp(q[t] @ k[s] / math.sqrt(head_size)) if mask[b, s] else 0.0
                     for s in range(TIME)]
                )
                merged[b, t, columns] = weights @ v / weights.sum()
    expected = merged @ params["proj.weight"] + params["proj.bias"]
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)


def test_block_param_names_are_dotted():
    names = set(Block(CHANNELS, HEADS, 4 * CHANNELS, causal=True).param_shapes())
    assert {"ln1.weight", "ln2.bias", "attn.qkv.weight", "attn.proj.bias", "mlp.fc.bias",
            "mlp.proj.weight"} <= names
    assert len(names) == 12


def test_float32_stays_float32():
    block = Block(CHANNELS, HEADS, 4 * CHANNELS, causal=True)
    params = {name: value.astype(np.float32) for name, value in random_params(block).items()}
    grads = {name: np.zeros_like(value) for name, value in params.items()}
    x = random_input(BATCH, TIME, CHANNELS).astype(np.float32)
    y, cache = block.forward(params, x, context())
    dx = block.backward(params, grads, np.ones_like(y), cache)
    assert y.dtype == dx.dtype == np.float32
    assert all(grad.dtype == np.float32 for grad in grads.values())


def test_gradients_accumulate_into_the_callers_buffers():
    linear = Linear(CHANNELS, CHANNELS)
    params = random_params(linear)
    grads = {name: np.ones_like(value) for name, value in params.items()}
    buffers = dict(grads)
    x, dy = random_input(BATCH, TIME, CHANNELS), random_input(BATCH, TIME, CHANNELS, seed=8)
    linear.backward(params, grads, dy, linear.forward(params, x, context())[1])
    assert all(grads[name] is buffers[name] for name in grads)
    expected = 1.0 + x.reshape(-1, CHANNELS).T @ dy.reshape(-1, CHANNELS)
    np.testing.assert_allclose(grads["weight"], expected, rtol=1e-14)


# PyTorch autograd as a second, independent reference.


def import_torch():
    try:
        import torch
    except ImportError as error:  # absent, or installed without its libraries
        pytest.skip(f"PyTorch is not importable: {error}")
    return torch


def leaves(torch, arrays: dict) -> dict:
    return {name: torch.tensor(value, requires_grad=True) for name, value in arrays.items()}


def torch_attention(torch, weights: dict, x, causal: bool, mask):
    batch, time, channels = x.shape
    head_size = channels // HEADS
    q, k, v = (x @ weights["qkv.weight"] + weights["qkv.bias"]).split(channels, dim=-1)
    q, k, v = (z.view(batch, time, HEADS, head_size).transpose(1, 2) for z in (q, k, v))
    allowed = None  # True where attention may look
    if causal:
        allowed = torch.ones(time, time, dtype=torch.bool).tril()
    if mask is not None:
        allowed = torch.tensor(mask)[:, None, None, :]
    heads = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    merged = heads.transpose(1, 2).reshape(batch, time, channels)
    return merged @ weights["proj.weight"] + weights["proj.bias"]


def run_layer(layer, params, x, dy, ctx):
    y, cache = layer.forward(params, x, ctx)
    grads = {name: np.zeros_like(value) for name, value in params.items()}
    dx = layer.backward(params, grads, dy, cache)
    return y, dx, grads


def assert_matches_torch(y, dx, grads, y_torch, x_torch, params_torch) -> None:
    np.testing.assert_allclose(y, y_torch.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx, x_torch.grad.numpy(), rtol=1e-10, atol=1e-12)
    for name, grad in grads.items():
        np.testing.assert_allclose(
            grad, params_torch[name].grad.numpy(), rtol=1e-10, atol=1e-12, err_msg=name
        )


@pytest.mark.parametrize("causal", [True, False])
def test_attention_matches_torch_autograd(causal):
    torch = import_torch()
    attention = Attention(CHANNELS, HEADS, causal=causal)
    params = random_params(attention)
    mask = None if causal else padding_mask()
    x = random_input(BATCH, TIME, CHANNELS)
    dy = random_input(BATCH, TIME, CHANNELS, seed=12)
    y, dx, grads = run_layer(attention, params, x, dy, context(attention_mask=mask))

    params_torch, x_torch = leaves(torch, params), torch.tensor(x, requires_grad=True)
    y_torch = torch_attention(torch, params_torch, x_torch, causal, mask)
    y_torch.backward(torch.tensor(dy))
    assert_matches_torch(y, dx, grads, y_torch, x_torch, params_torch)


def test_block_matches_torch_autograd():
    torch = import_torch()
    functional = torch.nn.functional
    block = Block(CHANNELS, HEADS, 4 * CHANNELS, causal=True)
    params = random_params(block)
    x = random_input(BATCH, TIME, CHANNELS)
    dy = random_input(BATCH, TIME, CHANNELS, seed=12)
    y, dx, grads = run_layer(block, params, x, dy, context())

    t, x_torch = leaves(torch, params), torch.tensor(x, requires_grad=True)
    attention = {name.removeprefix("attn."): t[name] for name in t if name.startswith("attn.")}
    h = functional.layer_norm(x_torch, (CHANNELS,), t["ln1.weight"], t["ln1.bias"], eps=1e-5)
    residual = x_torch + torch_attention(torch, attention, h, True, None)
    h = functional.layer_norm(residual, (CHANNELS,), t["ln2.weight"], t["ln2.bias"], eps=1e-5)
    hidden = functional.gelu(h @ t["mlp.fc.weight"] + t["mlp.fc.bias"], approximate="tanh")
    y_torch = residual + hidden @ t["mlp.proj.weight"] + t["mlp.proj.bias"]
    y_torch.backward(torch.tensor(dy))
    assert_matches_torch(y, dx, grads, y_torch, x_torch, t)
