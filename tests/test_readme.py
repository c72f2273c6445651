"""The README opens with the two commands; CI runs the second verbatim, as its last line. Every ``probekit``
command the README names in a code block is a real subcommand (``tests/test_docs.py`` checks the docs pages with
the same helpers)."""

from __future__ import annotations

import contextlib
import functools
import io
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FENCED = re.compile(r"^(?P<fence>```|~~~)(?P<lang>[^\n]*)\n(?P<body>.*?)^(?P=fence)[ \t]*$", flags=re.S | re.M)
SHELL = {"", "bash", "sh", "shell", "console", "text"}  # blocks whose lines are commands (not Python, YAML, ...)
INLINE_CODE = re.compile(r"(?<!`)`(?!`)(?P<body>[^`\n]+)`(?!`)")
# `probekit` as a command: at the start of a line or after a shell separator, not `probekit.x`, `probekit-lm`, ...
INVOCATION = re.compile(r"(?:^|(?<=[\s;&|(]))probekit(?![\w.\-/])(?P<rest>[^\n;&|)#]*)", flags=re.M)
GLOBAL_FLAGS = {"-v", "--verbose"}  # global options without a value; --threads takes one
WORD = re.compile(r"[a-z][a-z0-9_-]*")


def fenced_blocks(text: str, languages: set[str] | None = None) -> list[str]:
    """The bodies of the fenced code blocks of a Markdown text, in order (only those in ``languages``, if given)."""
    return [m["body"] for m in FENCED.finditer(text) if languages is None or m["lang"].strip() in languages]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```bash\n(.+?)\n```", text, flags=re.S)[:2]


def named_commands(text: str) -> list[tuple[str, ...]]:
    """Every ``probekit`` invocation in the code of a Markdown text (shell code blocks, and inline code that starts
    with ``probekit ``), as the words naming the command: ``("eval", "qa")``, ``("run", "experiments")`` ... Global
    options are skipped; the second word is kept only when it could be a subcommand (a plain lowercase word)."""
    code = fenced_blocks(text, SHELL)
    code += [m["body"] for m in INLINE_CODE.finditer(FENCED.sub("", text)) if m["body"].startswith("probekit ")]
    out: list[tuple[str, ...]] = []
    for snippet in code:
        for m in INVOCATION.finditer(snippet):
            words = m["rest"].split()
            while words and words[0].startswith("-"):
                flag = words.pop(0)
                if flag == "--threads":
                    words = words[1:]  # its value
                elif flag not in GLOBAL_FLAGS and not flag.startswith("--threads="):
                    raise AssertionError(f"unknown global option {flag!r} in {m.group(0)!r}")
            if not words or not WORD.fullmatch(words[0]):
                continue  # `probekit --threads`, `probekit <command> --help`: names no command
            command = (words[0],)
            if len(words) > 1 and WORD.fullmatch(words[1]):
                command += (words[1],)
            out.append(command)
    return out


@functools.cache
def help_exit_code(words: tuple[str, ...]) -> int:
    """The exit status of ``probekit <words> --help``, run in this process: 0 when the words name a command (a
    second word that is no subcommand of a command that has subcommands is an error, exit status 2)."""
    from probekit.cli import main

    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        try:
            return main([*words, "--help"])
        except SystemExit as e:
            return int(e.code or 0)


def unknown_commands(text: str) -> list[str]:
    """The ``probekit`` commands named in ``text``'s code that the command line does not have."""
    bad = []
    for words in dict.fromkeys(named_commands(text)):
        if help_exit_code(words[:1]) != 0:
            bad.append(f"probekit {words[0]}")
        elif len(words) > 1 and help_exit_code(words) != 0:
            bad.append(f"probekit {' '.join(words)}")
    return bad


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    main_cmd, test_cmd = readme_commands()
    assert "probekit demo" in main_cmd and "pytest" in test_cmd
    assert "torch==2.13.0" in main_cmd and "torch==2.13.0" in test_cmd
    ci_lines = [ln for ln in (ROOT / ".ci" / "run").read_text().splitlines() if ln.strip()]
    assert ci_lines[-1] == test_cmd, "the last line of .ci/run must be the README's test command, verbatim"


def test_readme_commands_are_real_subcommands() -> None:
    text = (ROOT / "README.md").read_text()
    assert ("demo",) in named_commands(text)
    assert unknown_commands(text) == []


def test_named_commands_reads_shell_lines() -> None:
    text = (
        "```bash\nprobekit --threads 2 demo --figures-out f && probekit eval qa --out x; probekit run experiments/a\n"
        "accelerate launch -m probekit.cli train\npip install probekit-lm\n```\n"
        "```python\nload('runs/x')  # probekit checkpoint\n```\n"
        "Inline: `probekit data bios --n 3`, `probekit.data.store` and `the probekit way`.\n"
    )
    assert named_commands(text) == [("demo",), ("eval", "qa"), ("run",), ("data", "bios")]
    assert unknown_commands("```\nprobekit eval qa\nprobekit data nosuch\nprobekit nosuch\n```\n") == [
        "probekit data nosuch",
        "probekit nosuch",
    ]
