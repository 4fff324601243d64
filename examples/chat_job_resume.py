"""A chat job from a JSONL file, interrupted and resumed.

Writes 400 requests in the OpenAI Batch API format, starts `ferrobatch run` on them against
the fake server, interrupts it (Ctrl-C) partway, and runs the same command again: it finds the
job in its store and sends only what was not done. The server's request log shows nothing was
paid for twice.

    python examples/chat_job_resume.py
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ferrobatch.testing import FakeServer

with FakeServer(latency=0.02) as server, tempfile.TemporaryDirectory() as tmp:
    src, out = Path(tmp, "requests.jsonl"), Path(tmp, "results.jsonl")
    with src.open("w") as f:
        for i in range(400):
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"q{i}"}]}
            line = {"custom_id": f"q{i}", "method": "POST", "url": "/v1/chat/completions"}
            f.write(json.dumps({**line, "body": body}) + "\n")
    cmd = [sys.executable, "-m", "ferrobatch.cli", "run", str(src), "-o", str(out)]
    cmd += ["--base-url", server.openai_base_url, "--concurrency", "4"]
    env = {**os.environ, "OPENAI_API_KEY": "demo"}

    first = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)
    while server.request_count() < 100:  # let it get partway
        time.sleep(0.01)
    first.send_signal(signal.SIGINT)  # Ctrl-C: claimed requests are handed back
    print(f"interrupted (exit {first.wait()}) after {server.request_count()} requests")

    subprocess.run(cmd, env=env, check=True, stderr=subprocess.DEVNULL)
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    sent = server.request_count()
    print(f"resumed: {len(lines)} results; {sent} requests sent in all for 400")
    assert len(lines) == 400 and all(x["response"]["status_code"] == 200 for x in lines)
    assert sent < 400 + 20  # at most what was in flight at the interrupt went twice
