"""Docs that cannot rot: the README's Python example runs on the demo, every command its CLI
synopsis names exists, and every concrete `clockwork ...` command in the README and
docs/design.md parses with today's options (parsed, not run: they are trainings)."""

import os
import shlex

import pytest

from clockwork_engine.tools import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def blocks(path: str, lang: str) -> list[str]:
    """The fenced code blocks of a Markdown file whose info string is `lang` ("" for none)."""
    out, current, info = [], None, None
    with open(os.path.join(ROOT, path)) as f:
        for line in f:
            if line.startswith("```"):
                if current is None:
                    current, info = [], line[3:].strip()
                else:
                    if info == lang:
                        out.append("".join(current))
                    current = None
            elif current is not None:
                current.append(line)
    return out


def commands(path: str, lang: str = "bash") -> list[str]:
    """The `clockwork ...` lines of a file's code blocks, continuations joined, comments cut."""
    out = []
    for block in blocks(path, lang):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line.startswith("clockwork "):
                out.append(line)
    return out


@pytest.mark.slow
def test_readme_api_example_runs(tmp_path, monkeypatch):
    (code,) = blocks("README.md", "python")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["image"].size == (64, 64) and len(scope["images"]) == 2
    assert scope["edited"].size == scope["filled"].size == (64, 64)


def test_readme_cli_synopsis_names_real_commands(capsys):
    synopsis = [b for b in blocks("README.md", "") if "clockwork generate" in b]
    assert synopsis, "the README's CLI block is missing"
    names = {line.split()[1] for line in synopsis[0].splitlines() if line.startswith("clockwork ")}
    names |= {n.strip() for line in synopsis[0].splitlines() if "|" in line and "distill-" in line
              for n in line.split()[1:] if n.startswith("distill-")}
    for name in sorted(names):
        with pytest.raises(SystemExit) as e:
            cli.main([name, "--help"])
        assert e.value.code == 0, name
    capsys.readouterr()


@pytest.mark.parametrize("line", commands("README.md") + commands("docs/design.md"))
def test_documented_commands_parse(line):
    args = cli.build_parser().parse_args(shlex.split(line)[1:])
    assert callable(args.run)
