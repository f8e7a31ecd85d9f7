"""Run many benchmark commands side by side, each with its own log, until a deadline.

For a machine with more cores than one run can use, or a GPU that one small network
leaves mostly idle (the README's H100 rows were measured this way):

    python benchmarks/run_parallel.py JOBS [--jobs 8] [--deadline SECONDS] [--logs DIR]

JOBS is a text file with one job per line, ``NAME command...`` (a shell command line;
blank lines and lines starting with ``#`` are skipped). Jobs start in file order, at most
``--jobs`` at a time. At the deadline every job still running is stopped with its whole
process group (its log says so) and jobs not yet started are skipped. Prints one line per
job as it ends: name, exit code, minutes; and a JSON summary at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("jobs", type=Path)
    ap.add_argument("--jobs", dest="parallel", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--deadline", type=float, default=float("inf"), help="seconds")
    ap.add_argument("--logs", type=Path, default=Path("runs/logs"))
    args = ap.parse_args()
    pending = read_jobs(args.jobs)
    args.logs.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    running: dict[str, tuple[subprocess.Popen, float, object]] = {}
    result: dict[str, dict] = {}
    while pending or running:
        late = time.monotonic() - t0 > args.deadline
        while pending and len(running) < args.parallel and not late:
            name, cmd = pending.pop(0)
            log = open(args.logs / f"{name}.log", "w")  # noqa: SIM115 (closed when it ends)
            log.write(f"$ {cmd}\n")
            log.flush()
            proc = subprocess.Popen(
                cmd, shell=True, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
            running[name] = (proc, time.monotonic(), log)
        for name, (proc, start, log) in list(running.items()):
            code = proc.poll()
            if code is None and late:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    code = proc.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    code = proc.wait()
                log.write("\n[stopped at the deadline]\n")
            if code is not None:
                log.close()
                minutes = (time.monotonic() - start) / 60
                result[name] = {"exit": code, "minutes": round(minutes, 2)}
                print(f"{name}: exit {code} after {minutes:.1f} min", flush=True)
                del running[name]
        if late:
            for name, _ in pending:
                result[name] = {"exit": None, "minutes": 0.0}
                print(f"{name}: not started (deadline)", flush=True)
            pending = []
        time.sleep(0.5)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
