"""Every Python code block of the README and the docs runs (against the fake server), or is
marked `<!-- not run: REASON -->` with a reason; the site builds with `mkdocs --strict`
(`make docs`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from _docs_runner import blocks

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_code_block_runs_or_says_why_not(page: Path) -> None:
    found = blocks(page.read_text())
    for line, _, reason in found:
        assert reason is None or len(reason.split()) >= 4, f"{page}:{line}: say why it cannot run"
    if all(reason is not None for _, _, reason in found):
        return
    out = subprocess.run(
        [sys.executable, str(Path(__file__).parent / "_docs_runner.py"), str(page)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-4000:]


def test_the_docs_run_some_code() -> None:
    runnable = sum(r is None for p in PAGES for _, _, r in blocks(p.read_text()))
    assert runnable >= 6
