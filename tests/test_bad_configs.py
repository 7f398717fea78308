"""Bad configs under a real 4-rank mpirun: one message, a non-zero exit on every rank, quickly.

Each case runs twice. As users run it: mpirun's own exit code is non-zero and
stderr holds the message exactly once. With Open MPI's abort-on-failure turned
off, so that mpirun kills no rank for the others: every rank reports its own
exit code 2, which proves that each one stopped by itself, none hung.
"""

import pytest

from mpirun import mpipipe_args, run_ranks

RANKS = 4
LIMIT_S = 15
EXIT_USAGE = 2
EVERY_RANK_ON_ITS_OWN = {"OMPI_MCA_orte_abort_on_non_zero_status": "0"}

TINY = "examples/gpt_tiny.toml"
RANDOM_DATA = ["--set", "data.source=random"]


def written(text: str):
    """A config file with `text`, written into the test's folder."""
    return ("file", text)


CASES = [
    ("toml-syntax", written("[model]\nn_layer = = 8\n"), [], "line 2, column 11: TOML syntax"),
    ("unknown-section", written("[modle]\nn_layer = 8\n"), [],
     "unknown section [modle] (did you mean 'model'?)"),
    ("unknown-key", written("[model]\nn_layers = 8\n"), [],
     "unknown key model.n_layers (did you mean 'n_layer'?)"),
    ("key-in-wrong-section", written("[model]\nmicrobatch_size = 4\n"), [],
     "model.microbatch_size is not a key of [model]; microbatch_size belongs in [data]"),
    ("quoted-number", written('[model]\nn_layer = "8"\n'), [],
     'model.n_layer = "8" is a string, expected an integer (write n_layer = 8 without quotes)'),
    ("missing-file", ("path", "examples/no_such.toml"), [],
     "config file 'examples/no_such.toml' does not exist"),
    ("misspelt-schedule", TINY, ["--set", "parallel.schedule=bitpip"],
     "is not one of gpipe, 1f1b, interleaved, chimera, bitpipe, zb-h1, zb-v "
     "(did you mean 'bitpipe'?)"),
    ("below-minimum", TINY, ["--set", "train.steps=0"],
     "train.steps = 0 is below the minimum 1 (use 1 or more)"),
    ("not-finite", TINY, ["--set", "optim.lr=nan"], "optim.lr = nan is not a finite number"),
    ("malformed-set", TINY, ["--set", "parallel.schedule"],
     "is not of the form section.key=value"),
    ("heads-do-not-divide", TINY, ["--set", "model.d_model=30"],
     "model.d_model = 30 is not a multiple of model.n_head = 4"),
    ("vocabulary-too-small", TINY, ["--set", "model.vocab_size=100"],
     "model.vocab_size = 100 is too small for data.source = 'stdlib'"),
    ("world-size", TINY, [*RANDOM_DATA, "--set", "parallel.pipeline=2"],
     "the job has 4 MPI ranks but parallel.pipeline=2 x parallel.data_parallel=1 needs 2"),
    ("bitpipe-odd-microbatches", TINY,
     [*RANDOM_DATA, "--set", "parallel.schedule=bitpipe", "--set", "parallel.microbatches=6"],
     "bitpipe needs a multiple of the pipeline degree 4, got 6"),
    ("too-few-blocks-for-stages", TINY,
     [*RANDOM_DATA, "--set", "parallel.schedule=bitpipe", "--set", "model.n_layer=4"],
     "has 4 transformer blocks, which cannot be split evenly into 8 stages"),
    ("missing-token-file", TINY, ["--set", "data.source=npy", "--set", "data.path=none.npy"],
     "data.path 'none.npy'"),
]


def train_args(tmp_path, config, overrides) -> list[str]:
    kind, value = ("path", config) if isinstance(config, str) else config
    if kind == "file":
        path = tmp_path / "bad.toml"
        path.write_text(value)
        value = str(path)
    return mpipipe_args("train", value, *overrides, "--out", str(tmp_path / "run"))


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("mpipipe: error")]


@pytest.mark.parametrize(
    ("config", "overrides", "fragment"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_bad_config_fails_once_on_every_rank(tmp_path, config, overrides, fragment):
    args = train_args(tmp_path, config, overrides)

    as_users_run_it = run_ranks(RANKS, args, timeout=LIMIT_S)
    assert as_users_run_it.returncode != 0
    errors = error_lines(as_users_run_it.stderr)
    assert len(errors) == 1, as_users_run_it.stderr[-2000:]
    assert fragment in errors[0]
    assert "Traceback" not in as_users_run_it.output

    each_rank_alone = run_ranks(RANKS, args, timeout=LIMIT_S, env=EVERY_RANK_ON_ITS_OWN)
    assert each_rank_alone.rank_exits == dict.fromkeys(range(RANKS), EXIT_USAGE), (
        each_rank_alone.stderr[-2000:]
    )
    assert len(error_lines(each_rank_alone.stderr)) == 1
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_the_table_is_large_and_every_message_is_one_line():
    assert len(CASES) >= 10
    assert all("\n" not in fragment for *_, fragment in CASES)
