"""How fast a user's mistake reaches them: each of the CLI's error cases (issue 15's table) run as a fresh
``rlhf`` process, timed from start to exit, with the number of lines it printed to stderr and whether it printed
a traceback. Median of ``--repeats`` fresh processes each. Prints a table and writes JSON.

    python benchmarks/bench_cli_errors.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = {
    "misspelled flag": ["ppo", "--klcoef", "0.1"],
    "zero iterations": ["ppo", "--iterations", "0"],
    "negative iterations": ["ppo", "--iterations", "-1"],
    "--out is a file": ["ppo", "--out", "{file}"],
    "unknown prompt split": ["eval", "--split", "trainn", "--episodes", "2"],
    "no such reward path": ["ppo", "--reward", "/no/such/path"],
    "unknown command": ["frobnicate"],
}


def run(argv: list[str]) -> tuple[float, list[str], int]:
    rlhf = shutil.which("rlhf") or sys.exit("the rlhf command is not on PATH: pip install -e .")
    started = time.perf_counter()
    out = subprocess.run([rlhf, *argv], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    return seconds, [line for line in out.stderr.splitlines() if line.strip()], out.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/cli_errors.json")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "file"
        file.write_text("")
        for label, argv in CASES.items():
            argv = [a.replace("{file}", str(file)) for a in argv]
            runs = [run(argv) for _ in range(args.repeats)]
            seconds = statistics.median(r[0] for r in runs)
            lines, code = runs[-1][1], runs[-1][2]
            error_lines = [line for line in lines if not line.startswith(("usage:", " "))]
            rows.append({"case": label, "argv": argv, "seconds": seconds, "exit_code": code,
                         "stderr_lines": len(lines), "error_lines": len(error_lines),
                         "traceback": any("Traceback" in line for line in lines),
                         "message": error_lines[-1] if error_lines else ""})
    print(f"{'case':<24}{'seconds':>9}{'exit':>6}{'error lines':>13}  message")
    for r in rows:
        print(f"{r['case']:<24}{r['seconds']:>9.2f}{r['exit_code']:>6}{r['error_lines']:>13}  {r['message'][:80]}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"repeats": args.repeats, "rows": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
