from setuptools import find_packages, setup

setup(
    name="rlhf-env",
    version="0.1.0",
    description="InstructGPT-style RLHF as a Gymnasium environment plus RL agents, with an embedded offline world",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["rlhf_env", "rlhf_env.*", "agents", "agents.*"]),
    package_data={"rlhf_env": ["assets/*.json", "assets/**/*", "accel/*.c"]},
    include_package_data=True,
    install_requires=[
        "torch>=2.13,<2.14",  # the one CI tests; install torch==2.13.0 (CPU) first on a fresh machine: see README
        "transformers>=5.0,<6",
        "tokenizers>=0.21",
        "safetensors>=0.4",
        "datasets>=3.0",
        "gymnasium>=1.0,<2",
        "stable-baselines3>=2.4",
        "sb3-contrib>=2.4",  # MaskablePPO on the token env (agents/sb3)
        "numpy>=1.24",
        "tqdm>=4.60",
        "rich>=13",
        "tensorboard>=2.12",
        "matplotlib>=3.7",  # the benchmarks' plots
        "accelerate>=1.0",  # data-parallel agents: the process group under `accelerate launch` / torchrun
    ],
    extras_require={
        "deepspeed": ["deepspeed>=0.19,<0.20"],  # ZeRO through accelerate's DeepSpeed config (training/zero.py)
        "test": ["pytest>=8", "deepspeed>=0.19,<0.20"],
        "dev": ["pytest>=8", "deepspeed>=0.19,<0.20", "ruff"],
    },
    entry_points={"console_scripts": ["rlhf=rlhf_env.cli:main"]},
)
