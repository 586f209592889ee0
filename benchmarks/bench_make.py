"""How long ``gym.make("InstructBandit-v0")`` takes: in a fresh process (imports included, split into torch,
transformers' model code and the env itself) and again in a warm one. Prints a table and writes JSON.

    python benchmarks/bench_make.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

PROBE = """
import json, time
start = time.perf_counter()
import torch
torch_s = time.perf_counter() - start
import transformers.modeling_utils  # what loading any HF model needs
transformers_s = time.perf_counter() - start - torch_s
import gymnasium as gym, rlhf_env
made = time.perf_counter()
gym.make("InstructBandit-v0")
first_s = time.perf_counter() - made
made = time.perf_counter()
gym.make("InstructBandit-v0")
print(json.dumps({"torch_import_s": torch_s, "transformers_import_s": transformers_s, "first_make_s": first_s,
                  "fresh_total_s": made - start, "warm_make_s": time.perf_counter() - made}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes (the median is reported)")
    parser.add_argument("--out", default="benchmarks/results/make.json")
    args = parser.parse_args()
    runs = [json.loads(subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                                      check=True).stdout.strip().splitlines()[-1]) for _ in range(args.repeats)]
    result = {k: float(np.median([r[k] for r in runs])) for k in runs[0]}
    result["repeats"] = args.repeats
    title = 'gym.make("InstructBandit-v0")'
    print(f"{title:<40}{'seconds':>8}")
    rows = (("torch_import_s", "import torch"), ("transformers_import_s", "import transformers' model code"),
            ("first_make_s", "first make (models, prompts, RM)"), ("fresh_total_s", "fresh process, total"),
            ("warm_make_s", "a second make, warm process"))
    for key, label in rows:
        print(f"{label:<40}{result[key]:>8.2f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
