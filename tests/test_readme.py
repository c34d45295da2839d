"""The README's Python example runs as written, and its quickstart names the demo."""

from __future__ import annotations

import os
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(tmp_path, monkeypatch, capsys) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python example"
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks[0], "README.md", "exec"), {})
    *_, refused, last = capsys.readouterr().out.strip().splitlines()
    accuracy, source, health = last.split()
    assert float(accuracy) > 0.95 and (source, health) == ("single_member", "NOMINAL")
    assert refused.startswith("refused: frame 2: input rejected: stat.")
    assert (tmp_path / "state" / "versions.json").exists()
    assert (tmp_path / "state" / "events.log").exists()
    assert os.stat(tmp_path / "digits.egb").st_size > 0


def test_quickstart_is_two_commands() -> None:
    text = README.read_text()
    block = re.search(r"## Quickstart.*?```sh\n(.*?)```", text, flags=re.S)
    assert block is not None
    commands = [ln for ln in block.group(1).splitlines() if ln.strip()]
    assert len(commands) == 2
    assert commands[0].startswith("make demo") and commands[1].startswith("make test")


def test_every_exit_code_is_in_the_readme_table() -> None:
    """Each error class with an exit code of its own is a row of "Exit codes"."""
    from edgeguard import errors

    section = README.read_text().split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| (\d+) \| `(\w+)` \|", section, flags=re.M))
    own = {
        str(cls.exit_code): name
        for name in errors.__all__
        if (cls := getattr(errors, name)) is not errors.EdgeguardError
        and (cls.__base__ is errors.EdgeguardError or cls.exit_code != cls.__base__.exit_code)
    }
    assert own == rows
