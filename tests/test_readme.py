"""The README is a front door: short, its commands real."""

from __future__ import annotations

import re

import pytest

from kit.cli import main

from .conftest import ROOT

README = (ROOT / "README.md").read_text()


def test_the_readme_is_at_most_250_lines_and_15000_characters():
    assert len(README.splitlines()) <= 250 and len(README) <= 15_000


@pytest.mark.parametrize("command", sorted(set(re.findall(r"`kit ([a-z-]+(?: build)?)", README))))
def test_every_kit_command_the_readme_names_exists(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([*command.split(), "--help"])
    assert done.value.code == 0 and "usage:" in capsys.readouterr().out


def test_the_quickstart_builds_the_tiny_default_before_running_it():
    first = README.split("```bash\n")[1].splitlines()[0]
    assert first.endswith("&& .venv/bin/kit tiny build && .venv/bin/kit run params/smoke.yaml")
