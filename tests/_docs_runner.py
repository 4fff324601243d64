"""Run the Python code blocks of one markdown file, top to bottom, in one namespace (like a
notebook), against a fresh fake server: `python tests/_docs_runner.py FILE`.

The blocks see what a reader's machine would have: `OPENAI_BASE_URL` / `ANTHROPIC_BASE_URL`
and keys pointing at the fake server on 127.0.0.1, a scratch working directory, and `texts`
(a few strings). Top-level `await` works; one event loop serves the whole file. A block right
after `<!-- not run: REASON -->` is skipped (tests/test_docs.py checks the reason)."""

from __future__ import annotations

import ast
import asyncio
import inspect
import os
import re
import sys
import tempfile
from pathlib import Path

BLOCK = re.compile(r"(?ms)^```python\n(.*?)^```")
NOT_RUN = re.compile(r"<!-- not run: (.*?) -->\s*$")


def blocks(text: str) -> list[tuple[int, str, str | None]]:
    """(line, code, reason not to run it or None) of every python block."""
    out = []
    for m in BLOCK.finditer(text):
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        skip = NOT_RUN.search(before)
        out.append((text[: m.start()].count("\n") + 2, m.group(1), skip.group(1) if skip else None))
    return out


def main(path: str) -> None:
    from ferrobatch.testing import FakeServer

    source = Path(path).resolve()
    text = source.read_text()
    with FakeServer() as server, tempfile.TemporaryDirectory() as tmp:
        os.environ.update(
            OPENAI_BASE_URL=server.openai_base_url,
            OPENAI_API_KEY="sk-docs",
            ANTHROPIC_BASE_URL=server.anthropic_base_url,
            ANTHROPIC_API_KEY="sk-ant-docs",
        )
        os.chdir(tmp)
        ns: dict[str, object] = {"__name__": "__main__", "texts": ["alpha", "beta", "gamma"]}
        loop = asyncio.new_event_loop()
        try:
            for line, code, reason in blocks(text):
                if reason is not None:
                    continue
                padded = "\n" * (line - 1) + code  # tracebacks name the file's own lines
                compiled = compile(
                    padded, str(source), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
                )
                result = eval(compiled, ns)
                if inspect.iscoroutine(result):
                    loop.run_until_complete(result)
        finally:
            loop.close()


if __name__ == "__main__":
    main(sys.argv[1])
