#!/usr/bin/env bash
# The GPU check (issue 16): on one CUDA device, in about 5 minutes, from the repository root with the package
# installed. Runs the tests marked `cuda`, then benchmarks/gpu_check.py (sampler and PPO iteration throughput,
# float32 and bf16, and one default `rlhf ppo` run on sft-large), and writes JSON under OUT.
#
#     bash benchmarks/gpu_check.sh [OUT]        # OUT: benchmarks/results by default
set -euo pipefail
out="${1:-benchmarks/results}"
mkdir -p "$out"
python -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "gpu_check: torch sees no CUDA device")'
python -m pytest -q -m cuda -rs --runslow --junitxml="$out/gpu_check_tests.xml" tests/test_cuda.py
python benchmarks/gpu_check.py --out "$out/gpu_check.json"
