"""Every Python snippet in the README runs as written."""

from __future__ import annotations

import pathlib
import re

import pytest

README = (pathlib.Path(__file__).parent.parent / "README.md").read_text()
SNIPPETS = re.findall(r"```python\n(.*?)```", README, re.S)


@pytest.mark.parametrize("snippet", SNIPPETS, ids=[f"snippet{i}" for i in range(len(SNIPPETS))])
def test_readme_snippet_runs(snippet, capsys):
    exec(compile(snippet, "README.md", "exec"), {})
    if "print(" in snippet:
        printed = capsys.readouterr().out.split()
        assert printed == ["(4,", "10,", "16)", "(2,", "4,", "16)", "(2,", "4,", "16)", "True"]
