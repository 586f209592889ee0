"""How long ``gym.make("InstructBandit-v0")`` takes in a fresh process (imports included), and the make with the
first reset and step (so that nothing deferred to them is hidden); a second make in the same process; and a bare
``import torch`` for scale. Each is the median of fresh processes. Prints a table and writes JSON.

    python benchmarks/bench_make.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

PROBE = """
import json, sys, time
start = time.perf_counter()
import gymnasium as gym, rlhf_env
env = gym.make("InstructBandit-v0")
made = time.perf_counter()
env.reset(seed=0)
env.action_space.seed(0)
action = env.action_space.sample()
action["logprobs"][:] = 0.0
env.step(action)
stepped = time.perf_counter()
gym.make("InstructBandit-v0")
print(json.dumps({"fresh_make_s": made - start, "fresh_make_reset_step_s": stepped - start,
                  "warm_make_s": time.perf_counter() - stepped,
                  "heavy_imports": [m for m in ("transformers", "datasets") if m in sys.modules]}))
"""

TORCH = """
import json, time
start = time.perf_counter()
import torch
print(json.dumps({"torch_import_s": time.perf_counter() - start}))
"""

ROWS = (("torch_import_s", "import torch alone"), ("fresh_make_s", "import and gym.make, fresh process"),
        ("fresh_make_reset_step_s", "... and the first reset and step"),
        ("warm_make_s", "a second gym.make, warm process"))


def fresh(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="fresh processes per figure (the median is reported)")
    parser.add_argument("--out", default="benchmarks/results/make.json")
    args = parser.parse_args()
    runs = [{**fresh(PROBE), **fresh(TORCH)} for _ in range(args.repeats)]  # interleaved: load drifts hit both
    result = {key: float(np.median([r[key] for r in runs])) for key, _ in ROWS}
    result["heavy_imports"] = sorted({m for r in runs for m in r["heavy_imports"]})  # what make imported
    result["repeats"] = args.repeats
    title = 'gym.make("InstructBandit-v0")'
    print(f"{title:<40}{'seconds':>8}")
    for key, label in ROWS:
        print(f"{label:<40}{result[key]:>8.2f}")
    print(f"transformers or datasets imported: {', '.join(result['heavy_imports']) or 'neither'}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
