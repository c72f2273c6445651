"""The README opens with the two commands; CI runs the second verbatim."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```bash\n(.+?)\n```", text, flags=re.S)[:2]


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    main_cmd, test_cmd = readme_commands()
    assert "probekit demo" in main_cmd and "pytest" in test_cmd
    assert "torch==2.13.0" in main_cmd and "torch==2.13.0" in test_cmd
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_cmd.strip() in [ln.strip() for ln in ci_lines]
