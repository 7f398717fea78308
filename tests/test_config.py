"""Config loading, overrides, cross-key validation and `mpipipe config show`."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import random
import typing

import pytest

from mpipipe.commands import config as config_command
from mpipipe.config.load import load_config, parse_override
from mpipipe.config.schema import SECTIONS, Config
from mpipipe.config.show import config_to_dict, format_config
from mpipipe.config.validate import validate_config
from mpipipe.errors import UsageError

from oneline import one_line_error

# (config file text or None, --set overrides, fragments the one-line message must hold:
#  the key it names and the hint it gives)
BAD_INPUTS = [
    ("[modle]\nseq_len = 8\n", [], ["[modle]", "did you mean 'model'"]),
    ("[model]\nseqlen = 8\n", [], ["model.seqlen", "did you mean 'seq_len'"]),
    ("[optim]\nseq_len = 8\n", [], ["optim.seq_len", "belongs in [model]"]),
    ("seq_len = 8\n", [], ["seq_len", "put it under [model]"]),
    ("model = 3\n", [], ["model", "[model] on its own line"]),
    ('[model]\nseq_len = "64"\n', [], ["model.seq_len", "an integer", "without quotes"]),
    ("[model]\nn_layer = 2.0\n", [], ["model.n_layer", "an integer", "n_layer = 2"]),
    ("[model]\ntie_embeddings = 1\n", [], ["model.tie_embeddings", "true or false"]),
    ("[optim]\nlr = true\n", [], ["optim.lr", "is a boolean", "expected a number"]),
    ('[optim]\nlr = "fast"\n', [], ["optim.lr", "is a string", "expected a number"]),
    ('[model]\nkind = ["gpt"]\n', [], ["model.kind", "expected a string"]),
    ('[parallel]\nschedule = "bitpip"\n', [], ["parallel.schedule", "did you mean 'bitpipe'"]),
    ('[model]\nkind = "t5"\n', [], ["model.kind", "gpt, bert"]),
    ("[model]\nseq_len = 0\n", [], ["model.seq_len", "minimum 1"]),
    ("[data]\nmask_prob = 1.5\n", [], ["data.mask_prob", "maximum 1.0"]),
    ("[optim]\nlr = nan\n", [], ["optim.lr", "finite"]),
    (None, ["parallel.schedule=bitpip"], ["--set parallel.schedule=bitpip", "did you mean"]),
    (None, ["model.seq_len"], ["model.seq_len", "section.key=value"]),
    (None, ["seq_len=64"], ["seq_len=64", "section.key=value"]),
    (None, ["model.attn.heads=2"], ["model.attn.heads=2", "section.key=value"]),
    (None, ["modl.seq_len=64"], ["'modl'", "did you mean 'model'"]),
    (None, ["model.seq_len=abc"], ["model.seq_len", "expected an integer"]),
    (None, ["train.seed=-1"], ["train.seed", "minimum 0"]),
    (None, ["runtime.trace=yes"], ["runtime.trace", "true or false"]),
]


def write(tmp_path, text: str, name: str = "run.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(("text", "overrides", "fragments"), BAD_INPUTS)
def test_bad_input_gives_one_line_naming_the_key(tmp_path, text, overrides, fragments):
    path = None if text is None else write(tmp_path, text)
    message = one_line_error(lambda: load_config(path, overrides), fragments)
    origin = "--set" if text is None else "run.toml"
    assert origin in message


def test_missing_file_is_named(tmp_path):
    with pytest.raises(UsageError, match=r"config file '.*nope\.toml' does not exist"):
        load_config(str(tmp_path / "nope.toml"))


def test_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path, "[model]\nseq_len = 64\nd_model = \n", name="broken.toml")
    with pytest.raises(UsageError) as caught:
        load_config(path)
    message = str(caught.value)
    assert "broken.toml" in message and "line 3" in message and "\n" not in message


def test_override_values_parse_as_toml_or_bare_strings():
    config = load_config(None, [
        "parallel.microbatches=8", "optim.lr=1e-3", "runtime.trace=false",
        'data.path="with space.txt"', "parallel.schedule=bitpipe", "data.dataset=a=b",
        "checkpoint.dir = ckpt/run1",
    ])
    assert config.parallel.microbatches == 8 and type(config.parallel.microbatches) is int
    assert config.optim.lr == 1e-3
    assert config.runtime.trace is False
    assert config.data.path == "with space.txt"
    assert config.parallel.schedule == "bitpipe"
    assert config.data.dataset == "a=b"
    assert config.checkpoint.dir == "ckpt/run1"
    assert parse_override("model.kind=bert") == ("model", "kind", "bert")


def test_int_is_accepted_for_float_and_stored_as_float(tmp_path):
    config = load_config(write(tmp_path, "[optim]\nlr = 1\n"))
    assert config.optim.lr == 1.0 and type(config.optim.lr) is float


def test_overrides_apply_after_the_file_in_order(tmp_path):
    path = write(tmp_path, "[parallel]\nmicrobatches = 8\nschedule = \"gpipe\"\n")
    config = load_config(path, ["parallel.microbatches=16", "parallel.microbatches=32"])
    assert config.parallel.microbatches == 32
    assert config.parallel.schedule == "gpipe"
    assert config.model == Config().model


def test_sections_name_every_config_section():
    assert list(SECTIONS) == [field.name for field in dataclasses.fields(Config)]
    for name, section_class in SECTIONS.items():
        assert type(getattr(Config(), name)) is section_class


def random_config(rng: random.Random) -> Config:
    """A config with every key set to a random value its schema allows."""
    config = Config()
    for section, section_class in SECTIONS.items():
        hints = typing.get_type_hints(section_class)
        for field in dataclasses.fields(section_class):
            kind, metadata = hints[field.name], field.metadata
            minimum = metadata["minimum"] or 0
            if metadata["choices"]:
                value = rng.choice(metadata["choices"])
            elif kind is bool:
                value = rng.random() < 0.5
            elif kind is int:
                top = metadata["maximum"] if metadata["maximum"] is not None else minimum + 999
                value = rng.randint(minimum, top)
            elif kind is float:
                high = metadata["maximum"] if metadata["maximum"] is not None else 1e6
                if metadata["below"] is not None:
                    high = metadata["below"] * (1 - 1e-9)
                low = minimum if metadata["above"] is None else metadata["above"] + 1e-12
                value = rng.choice([low, high, rng.uniform(low, high), 1e-8 + low])
            else:
                value = "".join(rng.choice('ab"\\\t\n\x7fé/ #=[]') for _ in range(rng.randrange(8)))
            setattr(getattr(config, section), field.name, value)
    return config


@pytest.mark.parametrize("seed", range(8))
def test_format_config_loads_back_to_the_same_config(tmp_path, seed):
    config = Config() if seed == 0 else random_config(random.Random(seed))
    loaded = load_config(write(tmp_path, format_config(config)))
    assert loaded == config
    assert config_to_dict(loaded) == config_to_dict(config)


def test_format_config_comments_every_key_with_its_help():
    text = format_config(Config())
    for section, section_class in SECTIONS.items():
        assert f"[{section}]" in text
        for field in dataclasses.fields(section_class):
            line = next(line for line in text.splitlines() if line.startswith(f"{field.name} = "))
            assert line.split("  # ", 1)[1].startswith(field.metadata["help"])


def test_config_to_dict_has_every_key():
    values = config_to_dict(Config())
    assert list(values) == list(SECTIONS)
    for section, section_class in SECTIONS.items():
        assert list(values[section]) == [field.name for field in dataclasses.fields(section_class)]


def run_config_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="mpipipe")
    config_command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_config_show_prints_the_resolved_config(tmp_path, capsys):
    path = write(tmp_path, "[model]\nkind = \"bert\"\nvocab_size = 258\n")
    assert run_config_command(["config", "show", path, "--set", "model.seq_len=32"]) == 0
    shown = write(tmp_path, capsys.readouterr().out, name="shown.toml")
    assert load_config(shown) == load_config(path, ["model.seq_len=32"])


def test_config_without_action_prints_help(capsys):
    assert run_config_command(["config"]) == 2
    assert "show" in capsys.readouterr().out


# (overrides, world size, fragments of the one-line message)
INVALID_COMBINATIONS = [
    (["model.d_model=100", "model.n_head=8"], None,
     ["model.d_model = 100", "model.n_head = 8", "96 or 104"]),
    (["model.d_model=4", "model.n_head=8"], None, ["model.d_model = 4", "use model.d_model = 8"]),
    (["model.vocab_size=200"], None, ["model.vocab_size = 200", "256"]),
    (["model.kind=bert", "model.vocab_size=256", "data.source=text"], None,
     ["model.vocab_size = 256", "PAD and MASK", "258"]),
    (["model.kind=bert", "model.vocab_size=2", "data.source=random"], None,
     ["model.vocab_size = 2", "3 or more"]),
    (["parallel.pipeline=4"], 6,
     ["6 MPI ranks", "parallel.pipeline=4 x parallel.data_parallel=1 needs 4", "mpirun -n 4"]),
    (["parallel.pipeline=2", "parallel.data_parallel=2"], 1, ["1 MPI rank ", "needs 4"]),
    (["parallel.schedule=bitpipe", "parallel.pipeline=3"], 3, ["parallel.pipeline", "3"]),
    (["parallel.schedule=bitpipe", "parallel.pipeline=4", "parallel.microbatches=6"], 4,
     ["parallel.microbatches", "6"]),
]


@pytest.mark.parametrize(("overrides", "world_size", "fragments"), INVALID_COMBINATIONS)
def test_invalid_combination_names_the_keys(overrides, world_size, fragments):
    one_line_error(
        lambda: validate_config(load_config(None, overrides), world_size=world_size), fragments
    )


# Each rule at its edge: (overrides and world size it accepts, the same one step beyond,
#  the key the refusal names).
EDGES = [
    (([], None), (["model.n_head=3"], None), "model.d_model"),  # the defaults
    (([], 1), (["model.vocab_size=255"], 1), "model.vocab_size"),
    ((["parallel.data_parallel=2"], 4), (["parallel.data_parallel=3"], 4),
     "parallel.data_parallel"),
    ((["parallel.pipeline=2"], 2), (["parallel.pipeline=2"], 3), "parallel.pipeline"),
    ((["model.d_model=96", "model.n_head=8"], None),
     (["model.d_model=100", "model.n_head=8"], None), "model.d_model"),
    ((["model.kind=bert", "model.vocab_size=258"], None),
     (["model.kind=bert", "model.vocab_size=257"], None), "model.vocab_size"),
    ((["model.kind=bert", "model.vocab_size=3", "data.source=random"], None),
     (["model.kind=bert", "model.vocab_size=2", "data.source=random"], None), "model.vocab_size"),
    # An .npy file's token ids are checked when it is opened; bytes need 256 ids up front.
    ((["data.source=npy", "model.vocab_size=2"], None),
     (["data.source=text", "model.vocab_size=2"], None), "model.vocab_size"),
    ((["parallel.schedule=bitpipe", "parallel.pipeline=4", "parallel.microbatches=8",
       "parallel.data_parallel=2"], 8),
     (["parallel.schedule=bitpipe", "parallel.pipeline=4", "parallel.microbatches=8",
       "parallel.data_parallel=2"], 6), "parallel.data_parallel"),
    ((["parallel.schedule=bitpipe", "parallel.pipeline=4", "parallel.microbatches=12"], 4),
     (["parallel.schedule=bitpipe", "parallel.pipeline=4", "parallel.microbatches=10"], 4),
     "parallel.microbatches"),
]


@pytest.mark.parametrize(("accepted", "refused", "key"), EDGES)
def test_a_rule_accepts_its_edge_and_refuses_one_step_beyond(accepted, refused, key):
    overrides, world_size = accepted
    config = load_config(None, overrides)
    unchanged = copy.deepcopy(config)
    validate_config(config, world_size=world_size)
    assert config == unchanged, "validation changed the config"
    overrides, world_size = refused
    one_line_error(
        lambda: validate_config(load_config(None, overrides), world_size=world_size), [key]
    )
