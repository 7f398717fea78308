"""README stays true: its quick start is what CI runs, its config reference is complete."""

import re
from dataclasses import fields

from mpipipe.config.schema import SECTIONS

from mpirun import REPO

README = (REPO / "README.md").read_text()


def quick_start_commands() -> list[str]:
    section = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line.strip() for line in block.splitlines() if line.strip()]


def test_quick_start_is_two_commands_and_ci_runs_the_second():
    train, test = quick_start_commands()
    assert train.startswith("bash jobs/local/train.sh -n 4 examples/gpt_tiny.toml")
    assert "parallel.schedule=bitpipe" in train
    ci = (REPO / ".ci" / "run").read_text()
    assert test in ci or f"exec {test}" in ci, (test, ci)


def test_config_reference_names_every_key():
    for section, config_class in SECTIONS.items():
        assert f"[{section}]" in README, section
        for field in fields(config_class):
            assert re.search(rf"^{field.name} = ", README, re.M), f"{section}.{field.name}"
