"""Token sources, the Batcher's layout-independent sampling, GPT and BERT batches, data errors."""

from __future__ import annotations

import math
import os
import sysconfig

import h5py
import numpy as np
import pytest

from mpipipe.config.load import load_config
from mpipipe.data import Batcher, build_batcher
from mpipipe.data.corpus import stdlib_corpus, text_corpus
from mpipipe.tokens import IGNORE_INDEX

from oneline import one_line_error

# A corpus whose token at position p is p: a window shows where it was cut from.
CORPUS_LENGTH = 3000
POSITIONS = np.arange(CORPUS_LENGTH, dtype=np.uint16)
SEQ_LEN = 32


def batcher(kind: str, replicas: int = 1, microbatches: int = 4, microbatch_size: int = 3,
            seed: int = 7, **options) -> Batcher:
    return Batcher(POSITIONS, kind=kind, seq_len=SEQ_LEN, microbatch_size=microbatch_size,
                   microbatches=microbatches, replicas=replicas, seed=seed,
                   vocab_size=CORPUS_LENGTH, **options)


def same_batch(first, second) -> bool:
    masks_equal = (first.attention_mask is None and second.attention_mask is None) or \
        np.array_equal(first.attention_mask, second.attention_mask)
    return (np.array_equal(first.tokens, second.tokens)
            and np.array_equal(first.targets, second.targets)
            and masks_equal and first.loss_normalizer == second.loss_normalizer)


def concatenated(microbatches):
    masks = [microbatch.attention_mask for microbatch in microbatches]
    return type(microbatches[0])(
        tokens=np.concatenate([microbatch.tokens for microbatch in microbatches]),
        targets=np.concatenate([microbatch.targets for microbatch in microbatches]),
        attention_mask=None if masks[0] is None else np.concatenate(masks),
        loss_normalizer=microbatches[0].loss_normalizer,
    )


@pytest.mark.parametrize("kind", ["gpt", "bert"])
def test_global_batch_is_the_same_for_every_layout(kind):
    layouts = [(1, 8), (2, 4), (4, 2), (8, 1)]
    for step in (0, 3):
        reference = batcher(kind, replicas=1, microbatches=8).global_batch(step)
        for replicas, microbatches in layouts:
            layout = batcher(kind, replicas=replicas, microbatches=microbatches)
            assert same_batch(layout.global_batch(step), reference)
            parts = [layout.microbatch(step, replica, index)
                     for replica in range(replicas) for index in range(microbatches)]
            assert same_batch(concatenated(parts), reference)


@pytest.mark.parametrize("kind", ["gpt", "bert"])
def test_microbatches_continue_across_steps_by_global_index(kind):
    # With 2 micro-batches per step, step 1 holds global micro-batches 2 and 3,
    # which one replica with 4 micro-batches per step draws at step 0.
    short, long = batcher(kind, microbatches=2), batcher(kind, microbatches=4)
    for index in range(2):
        first = short.microbatch(1, 0, index)
        second = long.microbatch(0, 0, 2 + index)
        assert np.array_equal(first.tokens, second.tokens)
        assert np.array_equal(first.targets, second.targets)


@pytest.mark.parametrize("kind", ["gpt", "bert"])
def test_batches_depend_on_step_and_seed_only(kind):
    again = batcher(kind).global_batch(2)
    assert same_batch(batcher(kind).global_batch(2), again)
    assert not np.array_equal(batcher(kind).global_batch(1).tokens, again.tokens)
    assert not np.array_equal(batcher(kind, seed=8).global_batch(2).tokens, again.tokens)


def test_gpt_targets_are_the_next_tokens_of_one_window():
    batch = batcher("gpt", replicas=2, microbatches=3).global_batch(5)
    assert batch.tokens.shape == batch.targets.shape == (2 * 3 * 3, SEQ_LEN)
    assert batch.tokens.dtype == batch.targets.dtype == np.int64
    assert batch.attention_mask is None
    for tokens, targets in zip(batch.tokens, batch.targets, strict=True):
        start = tokens[0]
        assert np.array_equal(tokens, np.arange(start, start + SEQ_LEN))
        assert np.array_equal(targets, np.arange(start + 1, start + SEQ_LEN + 1))
    assert np.array_equal(batch.targets[:, :-1], batch.tokens[:, 1:])


def test_gpt_normalizer_counts_every_target_of_the_global_batch():
    layout = batcher("gpt", replicas=2, microbatches=3)
    batch = layout.global_batch(1)
    assert batch.loss_normalizer == np.count_nonzero(batch.targets != IGNORE_INDEX)
    assert layout.microbatch(1, 1, 2).loss_normalizer == batch.loss_normalizer


def bert_batch(mask_prob: float = 0.15, min_fill: float = 0.5, samples: int = 512):
    layout = batcher("bert", replicas=2, microbatches=4, microbatch_size=samples // 8,
                     mask_prob=mask_prob, min_fill=min_fill)
    return layout, layout.global_batch(3)


def test_bert_pads_after_the_real_length():
    layout, batch = bert_batch(min_fill=0.25)
    lengths = batch.attention_mask.sum(axis=1)
    assert np.array_equal(batch.attention_mask, np.arange(SEQ_LEN) < lengths[:, None])
    assert lengths.min() >= math.ceil(0.25 * SEQ_LEN) and lengths.max() <= SEQ_LEN
    assert len(np.unique(lengths)) > SEQ_LEN // 2  # lengths vary over the allowed range
    assert np.all(batch.tokens[~batch.attention_mask] == CORPUS_LENGTH)  # PAD = data vocab
    assert layout.pad_token == CORPUS_LENGTH and layout.mask_token == CORPUS_LENGTH + 1


def test_bert_masks_only_real_positions_with_the_original_token_as_target():
    _, batch = bert_batch()
    chosen = batch.targets != IGNORE_INDEX
    assert not np.any(chosen & ~batch.attention_mask)
    lengths = batch.attention_mask.sum(axis=1)
    counts = chosen.sum(axis=1)
    assert np.all(counts >= 1)
    assert np.all(np.abs(counts - 0.15 * lengths) <= 0.5 + 1e-9)
    for tokens, targets, real, picked in zip(batch.tokens, batch.targets, batch.attention_mask,
                                             chosen, strict=True):
        kept = np.flatnonzero(real & ~picked)
        start = tokens[kept[0]] - kept[0]  # the corpus position of the window's first token
        original = np.arange(start, start + SEQ_LEN)
        assert np.array_equal(tokens[kept], original[kept])
        assert np.array_equal(targets[picked], original[picked])


def test_bert_replaces_chosen_inputs_80_10_10():
    _, batch = bert_batch(samples=1024)
    chosen = batch.targets != IGNORE_INDEX
    inputs, originals = batch.tokens[chosen], batch.targets[chosen]
    mask_share = np.mean(inputs == CORPUS_LENGTH + 1)
    unchanged_share = np.mean(inputs == originals)
    random_share = 1 - mask_share - unchanged_share
    assert chosen.sum() > 3000
    assert abs(mask_share - 0.8) < 0.03
    assert abs(unchanged_share - 0.1) < 0.02
    assert abs(random_share - 0.1) < 0.02
    assert np.all(inputs[inputs != CORPUS_LENGTH + 1] < CORPUS_LENGTH)


def test_bert_normalizer_counts_the_chosen_targets_of_the_global_batch():
    layout, batch = bert_batch(mask_prob=0.3)
    assert batch.loss_normalizer == np.count_nonzero(batch.targets != IGNORE_INDEX)
    for replica in range(2):
        for index in range(4):
            assert layout.microbatch(3, replica, index).loss_normalizer == batch.loss_normalizer
    assert layout.loss_normalizer(4) == np.count_nonzero(layout.global_batch(4).targets
                                                         != IGNORE_INDEX)


def test_microbatch_outside_the_layout_is_refused():
    layout = batcher("gpt", replicas=2, microbatches=3)
    with pytest.raises(ValueError):
        layout.microbatch(0, 2, 0)
    with pytest.raises(ValueError):
        layout.microbatch(0, 0, 3)


@pytest.fixture(scope="module")
def stdlib_files():
    """The stdlib's .py files (outside site-packages), found independently of mpipipe.data."""
    root = sysconfig.get_path("stdlib")
    paths = []
    for directory, subfolders, names in os.walk(root):
        if directory == root:
            subfolders[:] = [name for name in subfolders
                             if name not in ("site-packages", "dist-packages")]
        paths += [os.path.join(directory, name) for name in names if name.endswith(".py")]
    return sorted(paths)


def test_stdlib_corpus_is_the_sorted_stdlib_sources_read_once(stdlib_files):
    corpus = stdlib_corpus()
    assert corpus is stdlib_corpus()
    assert corpus.dtype == np.uint8 and corpus.ndim == 1
    assert len(corpus) == sum(os.path.getsize(path) for path in stdlib_files)
    with open(stdlib_files[0], "rb") as file:
        first = file.read()
    with open(stdlib_files[-1], "rb") as file:
        last = file.read()
    assert corpus[:len(first)].tobytes() == first
    assert corpus[len(corpus) - len(last):].tobytes() == last


def test_stdlib_source_builds_a_byte_batcher():
    layout = build_batcher(load_config(None, ["model.seq_len=16"]))
    assert layout.vocab_size == 256 and layout.tokens is stdlib_corpus()
    assert layout.global_batch(0).tokens.max() < 256


def test_text_folder_is_read_recursively_in_path_order(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.txt").write_bytes(b"second ")
    (tmp_path / "a.txt").write_bytes(b"first ")
    (tmp_path / "sub" / "c.txt").write_bytes(b"third")
    assert text_corpus(str(tmp_path)).tobytes() == b"first second third"
    assert text_corpus(str(tmp_path / "b.txt")).tobytes() == b"second "


def data_config(tmp_path, source: str, path: str, *overrides: str):
    return load_config(None, [f"data.source={source}", f"data.path={path}", *overrides])


def test_npy_source_is_memory_mapped_with_vocab_max_plus_one(tmp_path):
    tokens = (np.arange(500) * 7 % 300).astype(np.uint16)
    np.save(tmp_path / "tokens.npy", tokens)
    config = data_config(tmp_path, "npy", tmp_path / "tokens.npy", "model.vocab_size=300")
    layout = build_batcher(config)
    assert isinstance(layout.tokens, np.memmap)
    assert layout.vocab_size == 300
    assert np.array_equal(layout.tokens, tokens)


def test_hdf5_source_matches_the_same_tokens_in_memory(tmp_path):
    tokens = (np.arange(700) * 13 % 256).astype(">i4")
    path = tmp_path / "tokens.h5"
    with h5py.File(path, "w") as file:
        file["corpus/plain"] = tokens
        file.create_dataset("corpus/packed", data=tokens, compression="gzip", chunks=(100,))
    in_memory = Batcher(tokens.astype(np.int64), kind="gpt", seq_len=64, microbatch_size=4,
                        microbatches=4, replicas=1, seed=1234, vocab_size=256).global_batch(2)
    for name in ("corpus/plain", "corpus/packed"):
        layout = build_batcher(data_config(tmp_path, "hdf5", path, f"data.dataset={name}"))
        assert same_batch(layout.global_batch(2), in_memory)
    plain = build_batcher(data_config(tmp_path, "hdf5", path, "data.dataset=corpus/plain"))
    assert isinstance(plain.tokens, np.memmap)


def test_random_source_uses_the_model_vocabulary():
    gpt = build_batcher(load_config(None, ["data.source=random", "model.vocab_size=1000"]))
    assert gpt.vocab_size == 1000 and gpt.model_vocab_size == 1000
    bert = build_batcher(load_config(None, ["data.source=random", "model.vocab_size=1000",
                                            "model.kind=bert"]))
    assert bert.vocab_size == 998 and bert.model_vocab_size == 1000
    assert bert.global_batch(0).tokens.max() <= 999
    assert len(np.unique(gpt.tokens)) == 1000


def make_npy(tmp_path, array) -> str:
    path = tmp_path / "tokens.npy"
    np.save(path, array)
    return str(path)


def make_hdf5(tmp_path) -> str:
    path = tmp_path / "tokens.h5"
    with h5py.File(path, "w") as file:
        file["train"] = np.arange(100)
        file["meta/ids"] = np.arange(5)
        file["floats"] = np.ones(100)
    return str(path)


def make_file(tmp_path, content: bytes) -> str:
    path = tmp_path / "corpus.txt"
    path.write_bytes(content)
    return str(path)


def make_empty_folder(tmp_path) -> str:
    (tmp_path / "empty" / "nested").mkdir(parents=True)
    return str(tmp_path / "empty")


# (source, how to make data.path, extra overrides, fragments the one-line message must hold)
DATA_ERRORS = [
    ("text", lambda tmp: str(tmp / "missing.txt"), [], ["data.path", "missing.txt",
                                                        "does not exist"]),
    ("text", lambda tmp: "", [], ["data.path is empty", "data.source = 'text'"]),
    ("npy", lambda tmp: "", [], ["data.path is empty", "data.source = 'npy'"]),
    ("hdf5", lambda tmp: str(tmp / "none.h5"), [], ["data.path", "none.h5", "does not exist"]),
    ("npy", lambda tmp: str(tmp), [], ["data.path", "is a folder"]),
    ("text", make_empty_folder, [], ["data.path", "no readable files"]),
    ("text", lambda tmp: make_file(tmp, b""), [], ["data.path", "is empty"]),
    ("text", lambda tmp: make_file(tmp, b"x" * 40), [],
     ["corpus.txt' has 40 tokens, fewer than model.seq_len + 1 = 65"]),
    ("text", lambda tmp: make_file(tmp, b"x" * 40), ["model.kind=bert", "model.vocab_size=258"],
     ["has 40 tokens, fewer than model.seq_len = 64"]),
    ("stdlib", lambda tmp: "", ["model.vocab_size=200"], ["model.vocab_size = 200", "256"]),
    ("npy", lambda tmp: make_npy(tmp, np.arange(301)), [],
     ["token ids 0..300", "model.vocab_size = 256", "301 or more"]),
    ("npy", lambda tmp: make_npy(tmp, np.arange(256)), ["model.kind=bert"],
     ["token ids 0..255", "PAD and MASK", "model.vocab_size = 256", "258 or more"]),
    ("npy", lambda tmp: make_npy(tmp, np.arange(-1, 99)), [], ["data.path", "negative"]),
    ("npy", lambda tmp: make_npy(tmp, np.zeros((10, 10), np.int32)), [],
     ["data.path", "2-D", "1-D integer"]),
    ("npy", lambda tmp: make_npy(tmp, np.zeros(100)), [], ["data.path", "float64", "1-D integer"]),
    ("npy", lambda tmp: make_npy(tmp, np.zeros(0, np.int32)), [], ["data.path", "no tokens"]),
    ("npy", lambda tmp: make_file(tmp, b"not an array"), [], ["data.path", "not a readable .npy"]),
    ("hdf5", make_hdf5, ["data.dataset=tokens"],
     ["data.dataset 'tokens'", "floats, meta/ids, train"]),
    ("hdf5", make_hdf5, ["data.dataset=meta"], ["data.dataset 'meta'", "train"]),
    ("hdf5", make_hdf5, ["data.dataset=floats"], ["data.dataset 'floats'", "1-D integer"]),
    ("hdf5", lambda tmp: make_file(tmp, b"not hdf5"), [], ["data.path", "not a readable HDF5"]),
]


@pytest.mark.parametrize(("source", "make_path", "overrides", "fragments"), DATA_ERRORS)
def test_bad_data_gives_one_line_naming_key_and_path(tmp_path, source, make_path, overrides,
                                                       fragments):
    config = data_config(tmp_path, source, make_path(tmp_path), *overrides)
    one_line_error(lambda: build_batcher(config), fragments)


# ----- the held-out split -------------------------------------------------------------------


def corpus_positions(batch) -> set[int]:
    """Corpus positions a GPT batch reads (POSITIONS holds each token's own position)."""
    windows = np.concatenate([batch.tokens, batch.targets[:, -1:]], axis=1)
    return set(windows.reshape(-1).tolist())


def test_held_out_windows_never_appear_in_training_batches():
    layout = batcher("gpt", replicas=2, microbatches=2, eval_fraction=0.25)
    held_out = layout.held_out(batches=3)
    evaluated = corpus_positions(held_out.all_samples())
    trained = set()
    for step in range(120):
        trained |= corpus_positions(layout.global_batch(step))
    assert evaluated and trained
    assert not trained & evaluated, "a training window read held-out tokens"
    ranges = set().union(*(range(start, end) for start, end in layout.split.eval_runs))
    assert evaluated <= ranges and not trained & ranges
    # The held-out share is about the fraction asked for, spread over the corpus.
    assert abs(len(ranges) / CORPUS_LENGTH - 0.25) < 0.1
    assert len(layout.split.eval_runs) > 1


def test_held_out_windows_are_consecutive_and_every_micro_batch_shares_one_normaliser():
    layout = batcher("gpt", replicas=2, microbatches=2, eval_fraction=0.25)
    held_out = layout.held_out(batches=2)
    starts = [int(tokens[0]) for tokens in held_out.all_samples().tokens]
    window = SEQ_LEN + 1
    assert all(layout.split.eval_offset(index) == start for index, start in enumerate(starts))
    per_run = [(end - start) // window for start, end in layout.split.eval_runs]
    assert layout.split.eval_windows == sum(per_run)
    first_run = layout.split.eval_runs[0]
    assert starts[:per_run[0]] == list(range(first_run[0], first_run[0] + per_run[0] * window,
                                             window))
    counted = 2 * layout.samples_per_step * SEQ_LEN
    parts = [held_out.microbatch(step, replica, index) for step in range(2)
             for replica in range(2) for index in range(2)]
    assert all(part.loss_normalizer == counted for part in parts)
    assert same_batch(concatenated(parts), held_out.all_samples())


def test_without_held_out_data_training_draws_its_offsets_as_before():
    layout = batcher("gpt", replicas=1, microbatches=2, eval_fraction=0.0)
    batch = layout.global_batch(4)
    first = 4 * layout.samples_per_step
    for row, sample in enumerate(range(first, first + layout.samples_per_step)):
        rng = np.random.default_rng([7, 0xDA7A, sample])
        assert batch.tokens[row, 0] == rng.integers(0, CORPUS_LENGTH - SEQ_LEN)


def test_bert_held_out_samples_mask_and_count_their_own_targets():
    layout = batcher("bert", replicas=1, microbatches=2, eval_fraction=0.25)
    held_out = layout.held_out(batches=2)
    batch = held_out.all_samples()
    assert batch.loss_normalizer == np.count_nonzero(batch.targets != IGNORE_INDEX)
    real = batch.tokens[batch.attention_mask & (batch.targets == IGNORE_INDEX)]
    ranges = set().union(*(range(start, end) for start, end in layout.split.eval_runs))
    assert set(real.tolist()) <= ranges


def test_an_eval_set_smaller_than_one_micro_batch_is_one_line(tmp_path):
    path = tmp_path / "short.txt"
    path.write_bytes(b"x" * 1000)
    one_line_error(
        lambda: build_batcher(load_config(None, [
            "data.source=text", f"data.path={path}", "data.eval_fraction=0.5",
            "data.microbatch_size=16",
        ])),
        ["data.eval_fraction = 0.5 holds out 7 window(s) of 65 tokens",
         "fewer than one micro-batch (data.microbatch_size = 16)"],
    )
