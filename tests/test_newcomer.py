"""CI does what a newcomer does: `.ci/run` runs the README's set-up commands, verbatim, in a
fresh virtual environment, and installs nothing else first."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def commands(lines: list[str]) -> list[str]:
    """Shell commands without comments and blank lines."""
    out = []
    for line in lines:
        code = re.sub(r"(^|\s)#.*$", "", line).strip()
        if code:
            out.append(code)
    return out


def readme_setup() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Set up\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block is not None, "the README's Set up section has no bash block"
    return commands(block.group(1).splitlines())


def ci_steps() -> list[str]:
    return commands((ROOT / ".ci" / "run").read_text().splitlines())


def test_the_readme_has_two_set_up_commands() -> None:
    setup = readme_setup()
    assert len(setup) == 2, setup
    assert setup[0].startswith("pip install .")
    assert setup[1] == "make test"


def test_ci_runs_the_readme_commands_verbatim_after_a_fresh_venv() -> None:
    steps = ci_steps()
    setup = readme_setup()
    # Everything before the README's commands only makes the fresh virtual environment.
    prelude = steps[: len(steps) - len(setup)]
    assert steps[len(prelude) :] == setup, f".ci/run ends with {steps[len(prelude) :]}"
    allowed = (
        "set -euo pipefail",
        'cd "$(dirname "$0")/.."',
        "rm -rf .venv",
        "python3 -m venv .venv",
        ". .venv/bin/activate",
        # System packages the README names (database servers, promtool) may be installed
        # with apt,
        # and services required (a test that would skip for want of one fails instead).
        "command -v redis-server >/dev/null || { apt-get ",
        "command -v pg_ctl >/dev/null || compgen -G '/usr/lib/postgresql/*/bin/pg_ctl' ",
        "command -v promtool >/dev/null || { apt-get ",
        "export FERROBATCH_REQUIRE_SERVICES=1",
    )
    for step in prelude:
        assert step.startswith(allowed), f".ci/run does more than a newcomer: {step!r}"
        assert not re.search(r"\bpip\b", step), f".ci/run pre-installs Python packages: {step!r}"


def test_ci_installs_only_system_packages_the_readme_names() -> None:
    readme = (ROOT / "README.md").read_text()
    for step in ci_steps():
        for package in re.findall(r"apt-get install -y -qq ([\w.+-]+)", step):
            assert f"`{package}`" in readme, (
                f".ci/run installs {package}, which the README never names"
            )
