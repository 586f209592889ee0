"""Which float32 kernels to use on this machine: measured once, cached, never slower than stock.

oneDNN's GEMM beats MKL's (PyTorch's default on a CPU) for this package's small shapes on some CPUs and
loses on others (``benchmarks/bench_ppo_iteration.py`` times both), so no fixed rule is right everywhere.
``choose(config)`` times both on the model's own layer shapes, for the two ways the package uses them:

- ``layers``: forward and backward of every projection (training, and the frozen models' scoring) at a
  minibatch's worth of rows, oneDNN's ``_linear_pointwise`` against ``F.linear``;
- ``decode``: the sampler's per-step projections on prepacked weights, at a batch of single tokens,
  against ``addmm``;

and likewise, for the package's C kernels (``rlhf_env.accel.native``, where a C compiler built them):

- ``gelu``: the MLP's tanh GELU, forward and backward at a minibatch's worth of rows of the inner width, through
  ``rlhf_env.accel.gelu`` against aten's;
- ``attention``: the sampler's decode-step attention over a KV cache of a batch of left-padded prompts, through
  ``rlhf_env.accel.decoder.attend_c`` against the same in PyTorch ops (``attend_torch``);
- ``packed_attention``: the packed training forwards' attention, forward and backward at a minibatch's worth of
  tokens in sequences laid end to end, through ``rlhf_env.accel.packed_attention`` against
  ``scaled_dot_product_attention`` on the packed rows (``rlhf_env.accel.trunk``'s two ways);
- ``sampling``: the sampler's draw of a token per row from a decode step's logits, through
  ``rlhf_env.sampling.draw_logits`` (the C kernel) against the same in PyTorch ops (``draw_logits_torch``);
- ``fused``: the lean decoder's layers after the attention at a batch of single tokens, the projections alone and
  their biases, the GELU, the residual sums and the LayerNorms in the C kernels' passes (``bias_gelu``,
  ``residual_layer_norm``), against the biased projections and PyTorch's ops (``rlhf_env.accel.decoder``, taken
  only where the C GELU and decode attention are too).

A kernel is chosen only where it is faster by more than ``MARGIN``: a tie, or noise, keeps stock PyTorch. The
result is cached per machine (CPU model, cores, threads, torch version, the C kernels' source) and per shape in
``$RLHF_ENV_CACHE/kernels.json`` (default ``~/.cache/rlhf_env``), so it is measured once: once it is measured on
free cores. Other processes' CPU time during a measurement (Linux's ``/proc``: every CPU's busy time, steal
included, less this process's) is taken as the measurement's load, and where the cores that this process's threads
need were busy (``contended``), the choice holds for this process only and is not cached: a busy machine skews the
ratios far past noise (multi-threaded PyTorch ops wait on descheduled threads, the single-threaded C kernels do
not), and a choice cached from them would hold for good. A run records its
choices in ``OUT/kernels.json`` and a resumed run takes them back (``restore``) before it loads a model, so it
continues on the kernels it started with, whatever the machine, threads or ranks it resumes on. Under a
launcher (``WORLD_SIZE`` > 1) nothing is measured, since ranks timing at once on shared cores would disagree:
a cached result for the ranks' thread count is used, else stock PyTorch (a cache written before shapes named
their heads, or before a C kernel, no longer answers: one single-process run measures again). A
measurement spends about ``BUDGET_S`` per use and shape, and one that fails (it should not) leaves stock PyTorch.
``RLHF_ENV_KERNELS=onednn`` or ``=stock`` skips the measurement and forces the package's kernels (oneDNN, and
the C kernels where they built) or stock PyTorch's (``auto``, the default, measures). ``chosen()`` lists what this
process chose, for the run log.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import statistics
import time
from pathlib import Path

POLICY_VAR = "RLHF_ENV_KERNELS"
POLICIES = ("auto", "onednn", "stock")
CACHE_VAR = "RLHF_ENV_CACHE"
MARGIN = 0.03  # a kernel must take under (1 - MARGIN) of stock's time
LAYER_ROWS = 1024  # about one PPO minibatch: 16 sequences of ~64 tokens
DECODE_ROWS = 64  # the sampler's default batch, one token each
DECODE_PROMPT, DECODE_NEW = 48, 48  # the attention's measured cache: prompts of up to 48 tokens, 48 new ones
BUDGET_S = 1.0  # about the most one measurement spends (at least MIN_REPEATS timed rounds each way)
MIN_REPEATS, MAX_REPEATS = 3, 7
LOAD_SLACK = 0.25  # CPUs of other processes' use tolerated beyond what this process's threads leave free
LOAD_WINDOW_S = 1.0  # the load is averaged over at least this long (/proc counts CPU time in ticks of 10 ms)
PACKED_LENGTHS = (16, 64)  # the sequences' lengths in the packed attention's measurement (uniform)
C_USES = ("gelu", "attention", "packed_attention", "sampling", "fused")  # a C kernel of the package's or PyTorch's


@dataclasses.dataclass(frozen=True)
class Choice:
    """The kernels for one model shape: ``layers`` and ``decode`` say whether oneDNN is used for each, ``gelu``,
    ``attention``, ``packed_attention``, ``sampling`` and ``fused`` whether the C GELU, decode-step attention, packed
    training attention, sampler's draw and decoder's bias and LayerNorm passes are; ``speedup`` is stock's time over
    the candidate's for each (above 1: the candidate faster), without the ones not measured; ``source`` is how it
    was decided: "measured", "cache", "unmeasured" (several ranks, no cached result), or the forcing policy
    ("onednn" or "stock")."""

    shape: str
    layers: bool
    decode: bool
    speedup: dict
    source: str
    gelu: bool = False  # (a run recorded before the C GELU existed used aten's)
    attention: bool = False  # (and one recorded before the C attention, PyTorch's)
    packed_attention: bool = False
    sampling: bool = False
    fused: bool = False
    load: float | None = None  # other processes' mean CPUs in use while it was measured (None: not measured here)

    def describe(self) -> str:
        def one(use: str) -> str:
            ratio = self.speedup.get(use)
            measured = f" (oneDNN {ratio:.2f}x stock)" if ratio is not None else ""
            return f"{use} {'oneDNN' if getattr(self, use) else 'MKL'}{measured}"

        def c(use: str, name: str, stock: str) -> str:
            ratio = self.speedup.get(use)
            return (f"{name} {'C kernel' if getattr(self, use) else stock}"
                    + (f" (C {ratio:.2f}x {stock})" if ratio is not None else ""))

        busy = f"{self.load:.2f}" if self.load is not None else "?"
        how = {"measured": "measured now", "cache": "measured before, cached",
               "contended": f"measured now, while other processes kept {busy} CPUs busy: not cached, so measured "
                            "again by the next process", "run": "as this run chose at its start",
               "failed": "the measurement failed: stock kernels",
               "unmeasured": "not measured under several ranks: stock kernels (a single process at the ranks' "
                             "thread count measures them for later runs)"}
        how = how.get(self.source, f"{POLICY_VAR}={self.source}")
        return (f"{self.shape}: {one('layers')}, {one('decode')}, {c('gelu', 'GELU', 'aten')}, "
                f"{c('attention', 'decode attention', 'torch')}, {c('packed_attention', 'packed attention', 'SDPA')}, "
                f"{c('sampling', 'draw', 'torch')}, {c('fused', 'bias and LayerNorm passes', 'torch')}; {how}")


_chosen: dict[str, Choice] = {}


def policy() -> str:
    """``RLHF_ENV_KERNELS`` (auto, onednn or stock); a ValueError names the allowed values."""
    value = os.environ.get(POLICY_VAR, "auto").strip().lower() or "auto"
    if value not in POLICIES:
        raise ValueError(f"{POLICY_VAR}={value!r}: use one of {', '.join(POLICIES)}")
    return value


@contextlib.contextmanager
def forced(value: str):
    """Inside this block ``RLHF_ENV_KERNELS`` is ``value`` and the choices made so far are forgotten, so that
    models loaded inside choose again (e.g. a benchmark timing both kernels); both are restored after."""
    before, saved = os.environ.get(POLICY_VAR), dict(_chosen)
    os.environ[POLICY_VAR] = value
    _chosen.clear()
    try:
        policy()  # a bad value raises here, not at the first load
        yield
    finally:
        if before is None:
            os.environ.pop(POLICY_VAR, None)
        else:
            os.environ[POLICY_VAR] = before
        _chosen.clear()
        _chosen.update(saved)


def cache_file() -> Path:
    root = os.environ.get(CACHE_VAR) or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rlhf_env"
    return Path(root) / "kernels.json"


def cpuinfo(key: str) -> str:
    """The first ``key`` line of Linux's /proc/cpuinfo ("model name", "flags", ...), "" where there is none."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.split(":", 1)[0].strip() == key), "")
    except OSError:
        return ""


def machine() -> str:
    """What a measurement holds for: the CPU model, its logical cores, torch's threads and torch's version, and the
    version of the package's C kernels (a hash of ``cpu.c``: a changed kernel is measured again)."""
    import torch

    from rlhf_env.accel import native

    model = cpuinfo("model name") or platform.processor() or platform.machine()
    return (f"{model} | {os.cpu_count()} cpus | {torch.get_num_threads()} threads | torch {torch.__version__} | "
            f"C kernels {native.source_digest()}")


def layers_of(config) -> int:
    """Transformer blocks of a config (GPT-2's or a generic HF one's name), 1 if it names none."""
    return int(getattr(config, "n_layer", None) or getattr(config, "num_hidden_layers", None) or 1)


def shapes(config) -> tuple[int, int, int]:
    """(width, inner width, vocabulary) of a transformer config (GPT-2's or a generic HF one's names)."""
    width = getattr(config, "n_embd", None) or config.hidden_size
    inner = getattr(config, "n_inner", None) or getattr(config, "intermediate_size", None) or 4 * width
    return int(width), int(inner), int(config.vocab_size)


def heads_of(config) -> int | None:
    """Attention heads of a GPT-2 config (the sampler's lean decoder, whose decode attention is measured, runs
    GPT-2s only), None for another model type or a config that names none."""
    heads = getattr(config, "n_head", None)
    return int(heads) if heads and getattr(config, "model_type", "gpt2") == "gpt2" else None


def choose(config) -> Choice:
    """The kernels for a model with this config (see the module docstring)."""
    width, inner, vocab = shapes(config)
    n_layer, heads = layers_of(config), heads_of(config)
    older = f"{n_layer} layer{'s' * (n_layer != 1)}, width {width}, inner {inner}, vocab {vocab}"
    shape = older.replace(", inner", f", {heads} heads, inner") if heads else older
    if shape in _chosen:
        return _chosen[shape]
    if older != shape and getattr(_chosen.get(older), "source", None) == "run":  # recorded before heads were
        _chosen[shape] = dataclasses.replace(_chosen.pop(older), shape=shape)
        return _chosen[shape]
    wanted = policy()
    if wanted != "auto":
        forced = wanted == "onednn"
        choice = Choice(shape, forced, forced, {}, wanted, **{use: forced and _c_built() for use in C_USES})
    else:
        key = f"{machine()} | {shape}"
        cached = _read_cache().get(key)
        if _valid(cached) and all(isinstance(cached.get(use), bool) for use in C_USES):
            choice = Choice(shape, cached["layers"], cached["decode"], cached["speedup"], "cache",
                            **{use: cached[use] for use in C_USES})
        elif int(os.environ.get("WORLD_SIZE", "1")) > 1:  # ranks timing at once on shared cores would disagree
            choice = Choice(shape, False, False, {}, "unmeasured")
        else:
            _c_built()  # a first build of the C kernels (the compiler: a child process) before the load's window
            before, start = cpu_seconds(), time.perf_counter()
            try:
                speedup = measure(width, inner, vocab, n_layer, heads)
            except (RuntimeError, NotImplementedError) as e:  # a kernel that cannot run here: stay on stock
                choice = Choice(shape, False, False, {"error": f"{type(e).__name__}: {e}"}, "failed")
            else:
                load = others_load(before, cpu_seconds(), time.perf_counter() - start)
                faster = {use: speedup.get(use, 0.0) > 1 / (1 - MARGIN) for use in ("layers", "decode", *C_USES)}
                choice = Choice(shape, faster["layers"], faster["decode"], speedup,
                                "contended" if contended(load) else "measured", load=load,
                                **{use: faster[use] for use in C_USES})
                if choice.source == "measured":
                    _write_cache(key, {**faster, "speedup": speedup})
    _chosen[shape] = choice
    return choice


def cpu_seconds() -> tuple[float, float] | None:
    """(every CPU's busy seconds, steal included; this process's CPU seconds, its waited-for children's included)
    from Linux's ``/proc``, None where it cannot be read."""
    try:
        with open("/proc/stat") as f:
            user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in f.readline().split()[1:9])
        with open("/proc/self/stat") as f:  # after the command's ")": state is field 3, utime..cstime 14..17
            utime, stime, cutime, cstime = (int(x) for x in f.read().rsplit(")", 1)[1].split()[11:15])
    except (OSError, ValueError):
        return None
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq + steal) / tick, (utime + stime + cutime + cstime) / tick


def others_load(before: tuple[float, float] | None, after: tuple[float, float] | None, seconds: float
                ) -> float | None:
    """Other processes' mean CPUs in use between two ``cpu_seconds``, over ``seconds`` (at least
    ``LOAD_WINDOW_S``: a short window holds a tick or two); None where either is unknown."""
    if before is None or after is None:
        return None
    busy, own = after[0] - before[0], after[1] - before[1]
    return max(0.0, busy - own) / max(seconds, LOAD_WINDOW_S)


def contended(load: float | None) -> bool:
    """Whether other processes' ``load`` (CPUs) left this process's threads fewer free CPUs than they need."""
    import torch

    return load is not None and load > max(0, (os.cpu_count() or 1) - torch.get_num_threads()) + LOAD_SLACK


def _c_built() -> bool:
    from rlhf_env.accel import native

    return native.library() is not None


def _valid(entry) -> bool:
    """A cached or recorded choice as this version writes it (else it is measured again); a cached one must also
    say every use of ``C_USES`` (``choose`` checks), which a recorded one of an older version may lack (``restore``
    takes a missing one as PyTorch's: what that run used)."""
    return (isinstance(entry, dict) and isinstance(entry.get("layers"), bool) and isinstance(entry.get("decode"), bool)
            and isinstance(entry.get("speedup"), dict)
            and all(isinstance(v, (int, float)) for v in entry["speedup"].values()))


def restore(out: str | os.PathLike) -> None:
    """Take the choices a run recorded in ``OUT/kernels.json`` (``rlhf_env.training.run.Run`` writes it), so that
    the run, resumed, continues on the kernels it started with; call it before the run loads a model. Nothing
    for a new run, or under a forcing ``RLHF_ENV_KERNELS``. A recorded C kernel that cannot be built here becomes
    PyTorch's (and says so)."""
    if policy() != "auto":
        return
    try:
        report = json.loads((Path(out) / "kernels.json").read_text())
    except (OSError, ValueError):
        return
    for entry in report.get("choices", []) if isinstance(report, dict) else []:
        if _valid(entry) and isinstance(entry.get("shape"), str):
            _chosen.setdefault(entry["shape"], Choice(entry["shape"], entry["layers"], entry["decode"],
                                                      entry["speedup"], "run",
                                                      **{use: entry.get(use) is True and _c_built()
                                                         for use in C_USES}))


def chosen() -> list[Choice]:
    """Every choice this process has made, in order."""
    return list(_chosen.values())


def _read_cache() -> dict:
    try:
        data = json.loads(cache_file().read_text())
    except (OSError, ValueError):
        return {}  # none yet, or unreadable: measure again (and rewrite it)
    return data if isinstance(data, dict) else {}


def _write_cache(key: str, entry: dict) -> None:
    path = cache_file()
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {**_read_cache(), key: entry}
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, path)  # atomic: a concurrent reader sees the old file or the new one
    except OSError:  # a read-only home: measure again next time
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def measure(width: int, inner: int, vocab: int, n_layer: int = 1, heads: int | None = None) -> dict[str, float]:
    """Stock time over the candidate's (the median of interleaved rounds): oneDNN's for ``layers`` and
    ``decode``, on the model's projections (a GPT-2 block's four, ``n_layer`` times, and the LM head once),
    where this torch has oneDNN; the C kernels' where they built: for ``gelu``, on ``n_layer`` GELUs of the inner
    width, for ``attention`` (given the ``heads``), on ``n_layer`` layers' decode steps, and for
    ``packed_attention`` (given heads whose size the kernel takes), on ``n_layer`` layers' attention of a minibatch,
    for ``sampling``, on draws from a decode step's logits, and for ``fused``, on ``n_layer`` decode steps' layers
    after the attention. It runs backward passes whatever the caller's grad mode."""
    import torch

    from rlhf_env.accel import onednn

    dims = [(3 * width, width), (width, width), (inner, width), (width, inner)] * n_layer + [(vocab, width)]
    with torch.inference_mode(False), torch.enable_grad():  # e.g. the sampler chooses under no_grad
        return {**(_measure(dims) if onednn.kernel_works() else {}),
                **({"gelu": _measure_gelu(inner, n_layer)} if _c_built() else {}),
                **({"attention": _measure_attention(width, heads, n_layer)} if heads and _c_built() else {}),
                **({"packed_attention": _measure_packed_attention(width, heads, n_layer)}
                   if heads and _c_built() and (width // heads) % 16 == 0 else {}),
                **({"sampling": _measure_sampling(vocab)} if _c_built() else {}),
                **({"fused": _measure_fused(width, inner, n_layer)} if _c_built() else {})}


def _measure_gelu(inner: int, n_layer: int) -> float:
    import torch
    import torch.nn.functional as F

    from rlhf_env.accel import gelu

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(LAYER_ROWS, inner, generator=generator, requires_grad=True)
    grad = torch.randn(LAYER_ROWS, inner, generator=generator)

    def run(fn):
        def rounds():
            for _ in range(n_layer):
                torch.autograd.backward((fn(x) * grad).sum(), inputs=[x])  # (grad_outputs would import sympy)
        return rounds

    return _ratio(run(lambda v: F.gelu(v, approximate="tanh")), run(gelu.apply))


def _measure_attention(width: int, heads: int, n_layer: int) -> float:
    """Decode steps at ``DECODE_ROWS`` rows over a cache of left-padded prompts (each row's prompt of 8 to
    ``DECODE_PROMPT`` tokens), every fourth of ``DECODE_NEW`` steps, once per layer."""
    import torch

    from rlhf_env.accel.decoder import attend_c, attend_torch

    generator = torch.Generator().manual_seed(0)
    B, P, D = DECODE_ROWS, DECODE_PROMPT, width // heads
    cache = torch.randn(2, B, heads, P + DECODE_NEW, D, generator=generator)
    qkv = torch.randn(B, 3 * width, generator=generator)
    start = P - torch.randint(8, P + 1, (B,), generator=generator)
    bias = torch.where(torch.arange(P + DECODE_NEW) < start[:, None], float("-inf"), 0.0)[:, None, None]
    steps = range(P, P + DECODE_NEW, 4)

    def torch_steps():
        with torch.no_grad():
            for _ in range(n_layer):
                for t in steps:
                    attend_torch(qkv, cache, bias, t, D**-0.5)

    def c_steps():
        for _ in range(n_layer):
            for t in steps:
                attend_c(qkv, cache, bias, start, t, D**-0.5)

    return _ratio(torch_steps, c_steps)


def _measure_sampling(vocab: int, steps: int = 16) -> float:
    """``steps`` draws of a token per row from ``DECODE_ROWS`` rows of logits over the vocabulary."""
    import torch

    from rlhf_env.sampling import draw_logits, draw_logits_torch

    logits = torch.randn(DECODE_ROWS, vocab, generator=torch.Generator().manual_seed(0)) * 3

    def run(draw):
        def rounds():
            generator = torch.Generator().manual_seed(0)
            for _ in range(steps):
                draw(logits, None, generator)  # at temperature 1, the sampler's default
        return rounds

    return _ratio(run(draw_logits_torch), run(draw_logits))


def _measure_fused(width: int, inner: int, n_layer: int) -> float:
    """``n_layer`` decode steps' layers after the attention at ``DECODE_ROWS`` rows (its output's projection, the
    MLP's two, the C GELU, the residual sums and the LayerNorms), the decoder's two ways."""
    import torch
    import torch.nn.functional as F

    from rlhf_env.accel import gelu
    from rlhf_env.accel.decoder import GPT2Decoder

    generator = torch.Generator().manual_seed(0)
    w_o, w_fc, w_proj = (torch.randn(n, m, generator=generator) * n**-0.5
                         for n, m in ((width, width), (width, inner), (inner, width)))
    b_o, b_fc, b_proj = (torch.randn(n, generator=generator) * 0.1 for n in (width, inner, width))
    norm = (torch.ones(width), torch.zeros(width), 1e-5)
    attended, stream = (torch.randn(DECODE_ROWS, width, generator=generator) for _ in range(2))

    def stock():
        with torch.no_grad():
            x = stream.clone()
            for _ in range(n_layer):
                x = torch.addmm(b_o, attended, w_o).add_(x)
                hidden = gelu.forward(torch.addmm(b_fc, F.layer_norm(x, (width,), *norm), w_fc))
                x = torch.addmm(b_proj, hidden, w_proj).add_(x)
                F.layer_norm(x, (width,), *norm)

    def fused():
        with torch.no_grad():
            x = stream.clone()
            for _ in range(n_layer):
                hidden = GPT2Decoder._bias_gelu(GPT2Decoder._residual_norm(x, attended @ w_o, b_o, norm) @ w_fc, b_fc)
                GPT2Decoder._residual_norm(x, hidden @ w_proj, b_proj, norm)

    return _ratio(stock, fused)


def _measure_packed_attention(width: int, heads: int, n_layer: int) -> float:
    """Forward and backward of ``n_layer`` layers' attention over ``LAYER_ROWS`` tokens, in sequences of
    ``PACKED_LENGTHS`` tokens: ``rlhf_env.accel.trunk``'s two ways on the same packing, the C kernel on the real
    tokens against PyTorch's attention on the packed rows."""
    import types

    import torch

    from rlhf_env.accel import trunk
    from rlhf_env.packing import plan

    generator = torch.Generator().manual_seed(0)
    lengths = []
    while sum(lengths) < LAYER_ROWS:
        lengths.append(int(torch.randint(PACKED_LENGTHS[0], PACKED_LENGTHS[1] + 1, (1,), generator=generator)))
    T = max(lengths)  # rows of a prompt (left-padded) and a response of one token, as a minibatch lays them out
    mask = (torch.arange(T) >= T - torch.tensor(lengths)[:, None]).long()
    packing = plan(torch.randint(5, 100, mask.shape, generator=generator) * mask, mask, 1, real_only=True)
    if packing is None:
        raise RuntimeError("the packed attention's measurement found nothing to pack")
    D = width // heads
    qkv = torch.randn(len(packing.real), 3 * width, generator=generator, requires_grad=True)
    grad = torch.randn(len(packing.real), width, generator=generator)
    attn = types.SimpleNamespace(c_attn=lambda hidden: qkv, num_heads=heads, head_dim=D, scaling=D**-0.5)

    def run(c_kernel: bool):
        attention = trunk.attention_of(packing, c_kernel)

        def layers():
            for _ in range(n_layer):
                torch.autograd.backward((attention(attn, qkv[:, :width]) * grad).sum(), inputs=[qkv])
        return layers

    return _ratio(run(False), run(True))


def _measure(dims: list[tuple[int, int]]) -> dict[str, float]:
    import torch
    import torch.nn.functional as F

    from rlhf_env.accel import onednn

    generator = torch.Generator().manual_seed(0)
    weights = [(torch.randn(o, i, generator=generator) * i**-0.5).requires_grad_(True) for o, i in dims]
    biases = [torch.zeros(o, requires_grad=True) for o, _ in dims]

    def layers(linear):
        def run():
            for w, b in zip(weights, biases):
                x = torch.randn(LAYER_ROWS, w.shape[1], generator=generator, requires_grad=True)
                torch.autograd.backward(linear(x, w, b).sum(), inputs=[x, w, b])
        return run

    with torch.no_grad():
        packed = [onednn.pack(w) for w in weights]
        columns = [w.t() for w in weights]
        inputs = [torch.randn(DECODE_ROWS, w.shape[1], generator=generator) for w in weights]

    def stock_decode():
        with torch.no_grad():
            for x, w, b in zip(inputs, columns, biases):
                torch.addmm(b, x, w)

    def onednn_decode():
        with torch.no_grad():
            for x, p, b in zip(inputs, packed, biases):
                onednn.packed_linear(x, p, b)

    return {"layers": _ratio(layers(F.linear), layers(onednn.linear)), "decode": _ratio(stock_decode, onednn_decode)}


def _ratio(stock, candidate) -> float:
    """Median time of ``stock`` over ``candidate``, run alternately after one warm-up round each."""
    stock(), candidate()
    times: dict = {stock: [], candidate: []}
    start = time.perf_counter()
    for i in range(MAX_REPEATS):
        for fn in (stock, candidate) if i % 2 == 0 else (candidate, stock):  # neither always goes first
            t = time.perf_counter()
            fn()
            times[fn].append(time.perf_counter() - t)
        if i + 1 >= MIN_REPEATS and time.perf_counter() - start > BUDGET_S:
            break
    return statistics.median(times[stock]) / statistics.median(times[candidate])
