"""Multi-head self-attention: causal (GPT) or bidirectional with a padding mask (BERT).

    qkv = x @ Wqkv + bqkv                       (Linear C -> 3C)
    att = softmax(q k^T / sqrt(D) + mask)       (per head, over keys)
    y   = merge_heads(att v) @ Wproj + bproj    (Linear C -> C)

Blocked scores (future keys when causal, padded keys when ctx.attention_mask
is given) are set to the float type's lowest value before the softmax, so
their probability is exactly 0 and a row with every key blocked stays finite.
Queries at padded positions still produce outputs; the loss ignores them.
Under a 2-byte compute type the scores, the softmax and its backward are
float32 (`stats_dtype`); the probabilities are rounded for the products
with v.

With keep_probabilities = False (the "attention" recompute policy) the cache
drops `att`, the one (B, H, T, T) array, and the backward computes it again
from the cached q and k by the forward's own steps, so it is bitwise the same.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mpipipe.backend import array_module
from mpipipe.fused import matmul
from mpipipe.layers.base import LayerCost, MicroBatch
from mpipipe.layers.composite import Composite, scoped
from mpipipe.layers.linear import Linear
from mpipipe.precision import stats_dtype


@dataclass(eq=False)
class Attention(Composite):
    channels: int
    n_head: int
    causal: bool
    init_std: float = 0.02
    proj_init_std: float = 0.02
    keep_probabilities: bool = True

    def __post_init__(self) -> None:
        if self.channels % self.n_head:
            raise ValueError(f"{self.channels} channels do not split into {self.n_head} heads")
        self.head_size = self.channels // self.n_head
        self.sublayers = {
            "qkv": Linear(self.channels, 3 * self.channels, self.init_std),
            "proj": Linear(self.channels, self.channels, self.proj_init_std),
        }

    def split_heads(self, qkv):
        """(B, T, 3C) -> q, k, v, each (B, H, T, D): views, no copies."""
        batch, time, _ = qkv.shape
        return qkv.reshape(batch, time, 3, self.n_head, self.head_size).transpose(2, 0, 3, 1, 4)

    def as_heads(self, merged):
        """(B, T, C) -> (B, H, T, D) view."""
        batch, time, _ = merged.shape
        return merged.reshape(batch, time, self.n_head, self.head_size).swapaxes(1, 2)

    def blocked_keys(self, xp, batch: int, time: int, ctx: MicroBatch):
        """Boolean mask broadcastable to (B, H, T, T), True where a query may not see a key."""
        blocked = None
        if self.causal:
            blocked = xp.triu(xp.ones((time, time), dtype=bool), 1)  # (T, T)
        if ctx is not None and ctx.attention_mask is not None:
            padded = ~xp.asarray(ctx.attention_mask, dtype=bool).reshape(batch, 1, 1, time)
            blocked = padded if blocked is None else blocked | padded  # (B, 1, T|1, T)
        return blocked

    def probabilities(self, xp, q, k, ctx: MicroBatch):
        """softmax(q k^T / sqrt(D) + mask): (B, H, T, T), softmax over the keys, in place
        (float32 under a 2-byte compute type)."""
        batch, _, time, _ = q.shape
        att = matmul(q, k.swapaxes(-1, -2), dtype=stats_dtype(q.dtype))
        att *= 1.0 / math.sqrt(self.head_size)
        blocked = self.blocked_keys(xp, batch, time, ctx)
        if blocked is not None:
            xp.copyto(att, xp.finfo(att.dtype).min, where=blocked)
        att -= att.max(axis=-1, keepdims=True)
        xp.exp(att, out=att)
        att /= att.sum(axis=-1, keepdims=True)
        return att

    def forward(self, params: dict, x, ctx: MicroBatch):
        xp = array_module(x)
        batch, time, channels = x.shape
        qkv, qkv_cache = self.sublayers["qkv"].forward(scoped(params, "qkv"), x, ctx)
        q, k, v = self.split_heads(qkv)
        att = self.probabilities(xp, q, k, ctx)
        # heads: (B, H, T, D) written straight into merged: (B, T, C)
        merged = xp.empty((batch, time, channels), dtype=qkv.dtype)
        matmul(att.astype(v.dtype, copy=False), v, out=self.as_heads(merged))
        y, proj_cache = self.sublayers["proj"].forward(scoped(params, "proj"), merged, ctx)
        kept = att if self.keep_probabilities else None
        return y, (qkv_cache, qkv, kept, merged, proj_cache, ctx)

    def backward_input(self, params: dict, dy, cache):
        qkv_cache, qkv, att, merged, proj_cache, ctx = cache
        xp = array_module(dy)
        wcaches = {}
        dmerged, wcaches["proj"] = self.sublayers["proj"].backward_input(
            scoped(params, "proj"), dy, proj_cache
        )
        dheads = self.as_heads(dmerged)  # (B, H, T, D)
        q, k, v = self.split_heads(qkv)
        if att is None:
            att = self.probabilities(xp, q, k, ctx)
        dqkv = xp.empty_like(qkv)  # (B, T, 3C)
        dq, dk, dv = self.split_heads(dqkv)
        stats = stats_dtype(qkv.dtype)
        matmul(att.astype(v.dtype, copy=False).swapaxes(-1, -2), dheads, out=dv)
        datt = matmul(dheads, v.swapaxes(-1, -2), dtype=stats)  # (B, H, T, T)
        # Softmax backward: dscore = att * (datt - sum_j att_j datt_j); the row sum
        # equals dheads . heads over D, far cheaper than over the T keys.
        row = (dmerged * merged).reshape(*merged.shape[:2], self.n_head, self.head_size)
        datt -= row.sum(axis=-1, dtype=stats).swapaxes(1, 2)[..., None]
        datt *= att
        datt *= 1.0 / math.sqrt(self.head_size)
        dscores = datt.astype(q.dtype, copy=False)
        matmul(dscores, k, out=dq)
        matmul(dscores.swapaxes(-1, -2), q, out=dk)
        dx, wcaches["qkv"] = self.sublayers["qkv"].backward_input(
            scoped(params, "qkv"), dqkv, qkv_cache
        )
        return dx, wcaches

    def cost(self, microbatch_size: int, seq_len: int, itemsize: int) -> LayerCost:
        linears = super().cost(microbatch_size, seq_len, itemsize)
        scores = float(microbatch_size * self.n_head * seq_len * seq_len)
        # Two (T x T x D) products per head forward, four backward; ~5 flops per score
        # for scale, mask and softmax. Recomputing the probabilities repeats the first
        # product and the softmax.
        products = 2.0 * scores * self.head_size
        recomputed = 0.0 if self.keep_probabilities else products + 5.0 * scores
        kept_scores = int(scores) if self.keep_probabilities else 0
        return LayerCost(
            forward_flops=linears.forward_flops + 2.0 * products + 5.0 * scores,
            backward_flops=linears.backward_flops + 4.0 * products + 5.0 * scores + recomputed,
            param_bytes=linears.param_bytes,
            activation_bytes=linears.activation_bytes
            + (3 * microbatch_size * seq_len * self.channels + kept_scores) * itemsize,
            input_bytes=linears.input_bytes,
            weight_cache_bytes=linears.weight_cache_bytes,
        )
