"""Run many benchmark commands side by side, each with its own log, until a deadline.

For a machine with more cores than one run can use, or a GPU that one small network
leaves mostly idle (the README's H100 rows were measured this way):

    python benchmarks/run_parallel.py JOBS [--jobs 8] [--deadline SECONDS] [--logs DIR]

JOBS is a text file with one job per line, ``NAME command...`` (a shell command line;
blank lines and lines starting with ``#`` are skipped). Jobs start in file order, at most
``--jobs`` at a time. At the deadline every job still running is stopped with its whole
process group (its log says so) and jobs not yet started are skipped. Prints one line per
job as it ends: name, exit code, minutes; and a JSON summary at the end. Stopping the
runner (Ctrl-C, SIGTERM) stops its jobs too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def read_jobs(path: Path) -> list[tuple[str, str]]:
    jobs = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, cmd = line.partition(" ")
        if not cmd.strip():
            raise SystemExit(f"{path}:{n}: a job needs a name and a command")
        jobs.append((name, cmd.strip()))
    names = [n for n, _ in jobs]
    if len(set(names)) != len(names):
        raise SystemExit(f"{path}: job names must be unique")
    return jobs


def _stop(jobs: dict[str, tuple[subprocess.Popen, float, object]], grace: float = 10.0) -> None:
    """SIGTERM every job's process group, wait up to ``grace`` seconds in all, then SIGKILL
    whatever is left of each group (children outlive a shell that dies first)."""
    for proc, _, _ in jobs.values():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    end = time.monotonic() + grace
    for proc, _, _ in jobs.values():
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(max(0.0, end - time.monotonic()))
    for proc, _, _ in jobs.values():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("jobs", type=Path)
    ap.add_argument("--jobs", dest="parallel", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--deadline", type=float, default=float("inf"), help="seconds")
    ap.add_argument("--logs", type=Path, default=Path("runs/logs"))
    args = ap.parse_args()
    if args.parallel < 1:
        raise SystemExit("--jobs must be at least 1")
    pending = read_jobs(args.jobs)
    args.logs.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    running: dict[str, tuple[subprocess.Popen, float, object]] = {}
    result: dict[str, dict] = {}

    def finish(name: str, code: int | None, note: str = "") -> None:
        proc, start, log = running.pop(name)
        if note:
            log.write(note)
        log.close()
        minutes = (time.monotonic() - start) / 60
        result[name] = {"exit": code, "minutes": round(minutes, 2)}
        print(f"{name}: exit {code} after {minutes:.1f} min", flush=True)

    # a runner stopped by a signal takes its jobs with it (they run in their own sessions)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        while pending or running:
            if time.monotonic() - t0 > args.deadline:
                _stop(running)
                for name in list(running):
                    finish(name, running[name][0].returncode, "\n[stopped at the deadline]\n")
                for name, _ in pending:
                    result[name] = {"exit": None, "minutes": 0.0}
                    print(f"{name}: not started (deadline)", flush=True)
                break
            while pending and len(running) < args.parallel:
                name, cmd = pending.pop(0)
                log = open(args.logs / f"{name}.log", "w")  # noqa: SIM115 (closed by finish)
                log.write(f"$ {cmd}\n")
                log.flush()
                proc = subprocess.Popen(cmd, shell=True, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)  # fmt: skip
                running[name] = (proc, time.monotonic(), log)
            for name, (proc, _, _) in list(running.items()):
                if proc.poll() is not None:
                    finish(name, proc.returncode)
            time.sleep(0.5)
    finally:
        if running:
            _stop(running)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
