"""How tools/gpu_check.py runs its steps: each command in its own process group, logged, killed at its
step's deadline; each step's result an Outcome (pass, fail, timeout, skipped, not_run) inside a total budget.
What the steps run and assert is tools/gpu_check.py's job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Step:
    name: str
    limit_s: float
    run: Callable[[Any], dict]  # given the Check; returns figures; raises StepFailed on a failed assertion


@dataclass
class Outcome:
    name: str
    status: str  # pass | fail | timeout | skipped (by design in this mode) | not_run (budget spent)
    seconds: float
    figures: dict = field(default_factory=dict)
    detail: str = ""
    log: str = ""


class StepFailed(Exception):
    pass


class StepSkipped(Exception):
    pass


def run_logged(
    cmd: list[str], log: Path, deadline: float, env: dict | None = None, ok_codes: tuple[int, ...] = (0,)
) -> str:
    """Run one command in its own process group, its output appended to `log`, killed at `deadline`
    (time.monotonic()); its output, or StepFailed on an exit code not in `ok_codes`."""
    left = deadline - time.monotonic()
    if left <= 1:
        raise subprocess.TimeoutExpired(cmd, 0)
    full_env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "MPLBACKEND": "Agg",
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    with log.open("a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        try:
            text, _ = proc.communicate(timeout=left)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            text, _ = proc.communicate()
            f.write(text + "\n[killed at the step's time limit]\n")
            raise
        f.write(text + f"\n[exit {proc.returncode}]\n")
    if proc.returncode not in ok_codes:
        tail = "\n".join(text.strip().splitlines()[-6:])
        raise StepFailed(f"`{' '.join(cmd[:4])} ...` exited {proc.returncode}: {tail}")
    return text


# A 2-core CPU starts processes and imports torch far slower than the GPU box: same steps, longer limits.
SMOKE_LIMIT_SCALE = 2.0


def run_steps(
    check: Any, steps: list[Step], budget_s: float, after: Callable[[list[Outcome]], None] = lambda o: None
) -> list[Outcome]:
    """Run the steps in order; `after(outcomes so far)` runs after each (summary.json is rewritten there).
    `check`: gpu_check.Check (its smoke flag and folders; the current step and its deadline are set here)."""
    start = time.monotonic()
    outcomes = []
    for step in steps:
        left = budget_s - (time.monotonic() - start)
        if left < 5:
            outcomes.append(Outcome(step.name, "not_run", 0.0, detail="total budget spent"))
            after(outcomes)
            continue
        limit = step.limit_s * (SMOKE_LIMIT_SCALE if check.smoke else 1.0)
        check.step, check.deadline = step.name, time.monotonic() + min(limit, left)
        t0 = time.monotonic()
        try:
            outcome = Outcome(step.name, "pass", 0.0, figures=step.run(check) or {})
        except subprocess.TimeoutExpired:
            outcome = Outcome(step.name, "timeout", 0.0, detail=f"over its {min(limit, left):.0f} s limit")
        except StepFailed as e:
            outcome = Outcome(step.name, "fail", 0.0, detail=str(e))
        except StepSkipped as e:
            outcome = Outcome(step.name, "skipped", 0.0, detail=str(e))
        except Exception as e:  # a defect in a step must not hide the others' results
            outcome = Outcome(step.name, "fail", 0.0, detail=f"{type(e).__name__}: {e}")
        outcome.seconds = round(time.monotonic() - t0, 1)
        outcome.log = str((check.logs / f"{step.name}.log").relative_to(check.out))
        outcomes.append(outcome)
        print(
            f"{outcome.status:>8}  {step.name:<22} {outcome.seconds:6.1f} s  "
            f"{json.dumps(outcome.figures) if outcome.figures else outcome.detail}"[:300],
            flush=True,
        )
        after(outcomes)
    return outcomes
