"""The line protocol between `realsize.py` and its measuring workers (standard library only).

A worker sets itself up (model, compilation, warm-up), prints `READY <json>`, then answers each
command read from stdin (`train`, `infer`, `quit`) with one `DONE <json>` line: the wall and
process CPU seconds of that unit of work plus what the worker adds. Keeping every worker alive
lets the orchestrator interleave them (A, B, A, B) so that all share the machine's load. The
torch peer runs in another interpreter without jaxpref, hence no imports beyond the standard
library here.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable

READY = "READY "
DONE = "DONE "


def send(prefix: str, payload: dict) -> None:
    print(prefix + json.dumps(payload), flush=True)


def timed_call(fn: Callable[[], dict | None]) -> dict:
    """Wall and process CPU seconds of `fn()`, merged with what it returns."""
    wall, cpu = time.perf_counter(), time.process_time()
    extra = fn() or {}
    return {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu, **extra}


def serve(ready: dict, commands: dict[str, Callable[[], dict | None]]) -> None:
    """Announce `ready`, then run the named commands read from stdin until `quit` or EOF."""
    send(READY, ready)
    for line in sys.stdin:
        name = line.strip()
        if name == "quit":
            break
        if name not in commands:
            send(DONE, {"error": f"unknown command {name!r}"})
            continue
        send(DONE, timed_call(commands[name]))
