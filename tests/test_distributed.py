"""Data parallelism (``rlhf_env/training/distributed.py``) in the PPO-family agents, the training loop and DPO:
2 gloo processes on a CPU against 1 process.

The 2 ranks are spawned with ``torch.multiprocessing`` and join their process group as under ``torchrun``
(``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``/``PORT`` in the environment), through accelerate. A spawn costs
seconds of imports, so one spawn (the ``two_ranks`` fixture) does the 2-rank side of both tests below."""

import faulthandler
import json
import os
import shutil
import signal
import socket
from unittest import mock

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from agents.dpo import DPOConfig, dpo
from agents.ppo import PPOAgent, PPOConfig
from agents.reinforce import REINFORCEAgent, REINFORCEConfig
from rlhf_env.configs import TrainConfig
from rlhf_env.models import load_policy, new_model, save_policy
from rlhf_env.sampling import lean_decoder_applies
from rlhf_env.stages.sft import demonstration_examples
from rlhf_env.training import sharding, zero
from rlhf_env.training.run import Interrupted
from rlhf_env.training.trainer import lm_batch_loss, train_loop
from tests.conftest import TINY_DIMS, learning_log
from tests.test_dpo import make_comparisons, make_data_dir
from tests.test_ppo import brevity, tiny_config

WORLD = 2
HANG_S = 900  # a rank still running after this long is stuck (the whole spawn takes about a minute)


def spawn(fn, *args) -> None:
    """``fn(rank, *args)`` in WORLD processes of one gloo process group."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_join, args=(port, fn, args), nprocs=WORLD)


def _join(rank, port, fn, args):
    faulthandler.dump_traceback_later(HANG_S, exit=True)  # a rank stuck in a collective fails the test, with its stack
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_WORLD_SIZE=str(WORLD))
    fn(rank, *args)


def save_tensors(tensors: dict[str, torch.Tensor], path) -> None:
    """Tensors between the processes as safetensors (no pickles)."""
    save_file({k: v.contiguous() for k, v in tensors.items()}, path)


def weights(agent) -> dict[str, torch.Tensor]:
    """The agent's trained weights (gathered from the ranks' shards if sharded)."""
    value = agent.training.full_state_dict(agent.value) if agent.value is not None else {}
    named = {**agent.training.full_state_dict(agent.policy), **{f"value.{k}": v for k, v in value.items()}}
    return {k: v.clone() for k, v in named.items()}


# what `accelerate launch` sets for an FSDP2 config, and for DeepSpeed configs of ZeRO stages 2 and 3
FSDP = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}
ZERO1 = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "1"}
ZERO2 = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"}
ZERO3 = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}


def partitioned(p: torch.Tensor) -> bool:
    """Whether no rank holds the whole parameter (FSDP's shards, ZeRO-3's partitions)."""
    return sharding.sharded(p) or zero.partitioned(p)


# -- one iteration: the same global batch ---------------------------------------------------------------------
CASES = {  # a statistic over the global batch in each: the leads' std, GAE's whitening, the batch baseline
    "ppo": (PPOAgent, PPOConfig, {}),
    "ppo-gae-ptx": (PPOAgent, PPOConfig, {"advantage": "gae", "group_size": 1, "ptx_coef": 0.1}),
    "reinforce": (REINFORCEAgent, REINFORCEConfig, {"group_size": 1, "minibatch_size": 8, "ppo_epochs": 1}),
}
SHARDED = {  # case: (its plain case, the launcher's settings)
    "ppo-fsdp": ("ppo", FSDP), "ppo-gae-ptx-fsdp": ("ppo-gae-ptx", FSDP), "reinforce-fsdp": ("reinforce", FSDP),
    "ppo-zero1": ("ppo", ZERO1), "ppo-zero2": ("ppo", ZERO2), "ppo-gae-ptx-zero2": ("ppo-gae-ptx", ZERO2),
    "ppo-gae-ptx-zero3": ("ppo-gae-ptx", ZERO3),
}
CASES.update({case: CASES[plain] for case, (plain, _) in SHARDED.items()})
BATCH = 8


def make(case, policy_dir, world_dir, out):
    agent, config, overrides = CASES[case]
    settings = {**vars(tiny_config(policy_dir, world_dir, out)), "batch_size": BATCH, "minibatch_size": 4,
                "ppo_epochs": 2, "lr": 1e-2, "kl_coef": 0.1, **overrides}
    with mock.patch.dict(os.environ, SHARDED[case][1] if case in SHARDED else {}):  # 1 process ignores it
        return agent(config(**settings))


def record_episodes(case, policy_dir, world_dir, tmp) -> None:
    """One process samples the global batch once (``tmp/CASE/episodes.safetensors``), for 1 process and 2 ranks to
    replay."""
    agent = make(case, policy_dir, world_dir, tmp / case / "record")
    episodes = agent.collect(agent.env.reset(seed=0)[0])
    # the tiny random policy seldom ends a response: cut them at seeded lengths, so that the ranks' shares of a
    # minibatch hold different numbers of tokens
    lengths = torch.randint(1, 9, (BATCH, 1), generator=torch.Generator().manual_seed(0))
    episodes["response_mask"] = episodes["response_mask"] * (torch.arange(episodes["response_mask"].shape[1]) < lengths)
    save_tensors({k: v for k, v in episodes.items() if torch.is_tensor(v)}, tmp / case / "episodes.safetensors")


def replay(agent, episodes: dict, rows: slice) -> None:
    """The test's hook: the agent's rollout gets these rows of recorded episodes instead of sampling its own (no
    next observations and no phase times: ``iterate`` is called once, on both sides alike)."""
    mine = {**{k: v[rows] for k, v in episodes.items()}, "next_obs": None, "times": {}}
    agent.collect = lambda obs: mine


def iterate_on_rank(rank, policy_dir, world_dir, tmp):
    """Each case's iteration on the recorded episodes, of which rank r holds rows 4r .. 4r + 3."""
    share = BATCH // WORLD
    for case in CASES:
        agent = make(case, policy_dir, world_dir, tmp / case / "two")
        replay(agent, load_file(tmp / case / "episodes.safetensors"), slice(rank * share, (rank + 1) * share))
        metrics, _ = agent.iterate(None)
        launcher = SHARDED[case][1] if case in SHARDED else {}
        assert agent.training.lockstep == (case in SHARDED)
        assert partitioned(next(agent.policy.parameters())) == (launcher in (FSDP, ZERO3))
        assert (agent.actor is not agent.policy) == (case in SHARDED)  # the sampler's plain copy
        assert lean_decoder_applies(agent.actor)  # the sampler's copy samples as fast as the policy
        trained = weights(agent)
        for name, value in agent.actor.state_dict().items():  # what the next rollout samples
            assert torch.equal(value, trained[name]), f"{case}: the sampler's copy is stale in {name}"
        save_tensors(trained, tmp / case / f"rank{rank}.safetensors")
        (tmp / case / f"rank{rank}.json").write_text(json.dumps(metrics))


# -- a run stopped and resumed ----------------------------------------------------------------------------------
class BrevityStoppingRank1:
    """Brevity; a Ctrl-C (SIGINT) reaches rank 1 alone, during its second rollout (iteration 2)."""

    __name__ = "brevity"  # names the reward in the run fingerprint, as the uninterrupted run's

    def __init__(self):
        self.calls = 0

    def __call__(self, prompts, responses):
        self.calls += 1
        if self.calls == 2 and os.environ["RANK"] == "1":
            os.kill(os.getpid(), signal.SIGINT)
        return brevity(prompts, responses)


def resume_config(policy_dir, world_dir, out, **overrides):
    return tiny_config(policy_dir, world_dir, out, iterations=4, save_every=2, batch_size=8, minibatch_size=4,
                       ppo_epochs=2, **overrides)


def stop_and_resume_on_rank(rank, policy_dir, world_dir, tmp, launcher: dict, **overrides):
    """An uninterrupted run (``full``), and one stopped at iteration 2 and resumed (``stopped``), on 2 ranks."""
    with mock.patch.dict(os.environ, launcher):
        _stop_and_resume_on_rank(rank, policy_dir, world_dir, tmp, **overrides)


def _stop_and_resume_on_rank(rank, policy_dir, world_dir, tmp, **overrides):
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "overrides.json").write_text(json.dumps(overrides))  # for the 1-process resume
    full = PPOAgent(resume_config(policy_dir, world_dir, tmp / "full", **overrides))
    full.train()
    with pytest.raises(ValueError, match="finished run"):  # on every rank, none waiting for the others
        PPOAgent(resume_config(policy_dir, world_dir, tmp / "full", **overrides))
    stopped = PPOAgent(resume_config(policy_dir, world_dir, tmp / "stopped", reward=BrevityStoppingRank1(),
                                     **overrides))
    with pytest.raises(Interrupted, match="interrupted at step 2"):  # rank 0 too: the ranks agree to stop
        stopped.train()
    if rank == 0:  # for a 1-process resume of the same checkpoint
        shutil.copytree(tmp / "stopped", tmp / "stopped-then-1-process")
    resumed = PPOAgent(resume_config(policy_dir, world_dir, tmp / "stopped", **overrides))
    resumed.train()
    assert resumed.iteration == 4
    save_tensors({**{f"full.{k}": v for k, v in weights(full).items()},
                  **{f"resumed.{k}": v for k, v in weights(resumed).items()}}, tmp / f"rank{rank}.safetensors")


# -- the training loop (pretraining, SFT, the scalar RM) and DPO ----------------------------------------------
LOOP_LAUNCHES = ["train_loop", "train_loop-fsdp", "train_loop-zero2", "train_loop-zero3"]
LM_EXAMPLES = 21  # in batches of 4: an epoch's last batch holds 1 example, and one rank sits it out


def lm_config(out) -> TrainConfig:
    return TrainConfig(out=str(out), epochs=2, batch_size=4, lr=3e-3, log_every=1, save_every=2)


def lm_examples(tmp) -> list[tuple[list[int], list[int]]]:
    return [tuple(example) for example in json.loads((tmp / "examples.json").read_text())]


def lm_loss_with_a_metric(tokenizer, launcher: dict, ctrl_c_at: int | None = None):
    """``train_causal_lm``'s loss with a metric (the loss again: metrics gather like the loss, and an idle rank
    takes rank 0's names), checking that the loss is taken on a partitioned model exactly under FSDP and ZeRO-3;
    ``ctrl_c_at``: a Ctrl-C that reaches rank 1 only, at that call."""
    lm, calls = lm_batch_loss(tokenizer, lm_config("unused")), 0

    def batch_loss(m, batch):
        nonlocal calls
        calls += 1
        assert partitioned(next(m.parameters())) == (launcher in (FSDP, ZERO3))
        if calls == ctrl_c_at and os.environ["RANK"] == "1":
            os.kill(os.getpid(), signal.SIGINT)
        loss, _, tokens = lm(m, batch)
        return loss, {"nll": loss.item()}, tokens

    return batch_loss


def train_loop_on_rank(rank, policy_dir, tmp, launcher: dict):
    """An uninterrupted LM run (``full``) and one that rank 1's Ctrl-C stops at step 3, then resumed (``stopped``),
    under the ``launcher``'s settings (FSDP, ZeRO-3: each step's loss is taken on the partitioned copy)."""
    examples, trained = lm_examples(tmp), {}
    with mock.patch.dict(os.environ, launcher):
        model, tokenizer = load_policy(str(policy_dir))
        train_loop(model, tokenizer, examples, lm_config(tmp / "full"), lm_loss_with_a_metric(tokenizer, launcher))
        trained["full"] = model
        model, tokenizer = load_policy(str(policy_dir))
        with pytest.raises(Interrupted, match="interrupted at step 3"):  # rank 0 too: the ranks agree to stop
            train_loop(model, tokenizer, examples, lm_config(tmp / "stopped"),
                       lm_loss_with_a_metric(tokenizer, launcher, ctrl_c_at=3))
        if rank == 0:  # for a 1-process resume of the same checkpoint
            shutil.copytree(tmp / "stopped", tmp / "stopped-then-1-process")
        model, tokenizer = load_policy(str(policy_dir))
        train_loop(model, tokenizer, examples, lm_config(tmp / "stopped"), lm_loss_with_a_metric(tokenizer, launcher))
        trained["resumed"] = model
        if (tmp / "from-plain").exists():  # the plain 2-rank run's checkpoint of step 3, continued under this launcher
            model, tokenizer = load_policy(str(policy_dir))
            train_loop(model, tokenizer, examples, lm_config(tmp / "from-plain"),
                       lm_loss_with_a_metric(tokenizer, launcher))
            trained["from-plain"] = model
    save_tensors({f"{run}.{k}": v.clone() for run, m in trained.items() for k, v in m.state_dict().items()},
                 tmp / f"rank{rank}.safetensors")


def vary_k(rows: list[dict]) -> list[dict]:
    """Each prompt's best 3, 4 or 5 responses in turn, so that a batch's pairs are not a multiple of its prompts."""
    varied = []
    for i, row in enumerate(rows):
        best = row["ranking"][:3 + i % 3]
        keep = sorted(best)
        new_index = {old: new for new, old in enumerate(keep)}
        varied.append({**row, "responses": [row["responses"][j] for j in keep], "eos": [row["eos"][j] for j in keep],
                       "ranking": [new_index[j] for j in best]})
    return varied


def dpo_config(policy_dir, tmp, out) -> DPOConfig:
    return DPOConfig(policy=str(policy_dir), data=str(tmp / "data"), out=str(tmp / out), beta=0.5, epochs=1,
                     batch_size=8, lr=3e-3, evals=1)


def dpo_on_rank(rank, policy_dir, tmp):
    result = dpo(dpo_config(policy_dir, tmp, "two"))
    (tmp / f"result{rank}.json").write_text(json.dumps(result))
    # Sharded, in passes of 5 completions: the ranks need unequal numbers of them, so the fewer make stand-ins.
    needed, agree = [], sharding.agree

    def spy(count, module):  # the training passes (the reference's and the evaluations' are not sharded)
        agreed = agree(count, module)
        if partitioned(next(module.parameters())):
            needed.append([count, agreed])
        return agreed

    for name, launcher in (("fsdp", FSDP), ("zero3", ZERO3)):
        needed.clear()
        with mock.patch.dict(os.environ, launcher), mock.patch("agents.dpo.TRAIN_CHUNK", 5), \
                mock.patch.object(sharding, "agree", spy):
            result = dpo(dpo_config(policy_dir, tmp, f"two-{name}"))
        (tmp / f"result{rank}-{name}.json").write_text(json.dumps({**result, "passes": needed}))


def grads_on_rank(rank, tmp):
    """Three parameters: a gradient on both ranks, on rank 1 only, on neither; all-reduced."""
    from rlhf_env.training.distributed import all_reduce_grads

    both, one, neither = (torch.nn.Parameter(torch.zeros(3)) for _ in range(3))
    both.grad = torch.full((3,), rank + 1.0)
    if rank == 1:
        one.grad = torch.arange(3.0)
    all_reduce_grads([both, one, neither])
    assert neither.grad is None
    save_tensors({"both": both.grad, "one": one.grad}, tmp / f"grads{rank}.safetensors")


def on_rank(rank, policy_dir, world_dir, tmp):
    dpo_on_rank(rank, policy_dir, tmp / "dpo")  # first: DPO joins the process group itself
    grads_on_rank(rank, tmp)
    train_loop_on_rank(rank, policy_dir, tmp / "train_loop", {})
    if rank == 0:
        shutil.copytree(tmp / "train_loop" / "stopped-then-1-process", tmp / "train_loop-zero3" / "from-plain")
    torch.distributed.barrier()
    train_loop_on_rank(rank, policy_dir, tmp / "train_loop-fsdp", FSDP)
    train_loop_on_rank(rank, policy_dir, tmp / "train_loop-zero2", ZERO2)
    train_loop_on_rank(rank, policy_dir, tmp / "train_loop-zero3", ZERO3)
    iterate_on_rank(rank, policy_dir, world_dir, tmp / "iteration")
    stop_and_resume_on_rank(rank, policy_dir, world_dir, tmp / "resume", {})
    stop_and_resume_on_rank(rank, policy_dir, world_dir, tmp / "resume-fsdp", FSDP)
    stop_and_resume_on_rank(rank, policy_dir, world_dir, tmp / "resume-fsdp-gae", FSDP, advantage="gae", group_size=1)
    stop_and_resume_on_rank(rank, policy_dir, world_dir, tmp / "resume-zero2", ZERO2)
    stop_and_resume_on_rank(rank, policy_dir, world_dir, tmp / "resume-zero3-gae", ZERO3, advantage="gae", group_size=1)


@pytest.fixture(scope="module")
def two_ranks(world, tokenizer, world_dir, tmp_path_factory):
    """The directory where 2 ranks ran the tests' work (``on_rank``), from the tiny policy in ``DIR/policy``."""
    tmp = tmp_path_factory.mktemp("distributed")
    torch.manual_seed(0)
    save_policy(new_model(TINY_DIMS, tokenizer), tokenizer, tmp / "policy")
    for case in CASES:
        (tmp / "iteration" / case).mkdir(parents=True)
        record_episodes(case, tmp / "policy", world_dir, tmp / "iteration")
    examples = demonstration_examples(world["demonstrations"]["train"].select(range(LM_EXAMPLES)), tokenizer)
    for launch in LOOP_LAUNCHES:
        (tmp / launch).mkdir()
        (tmp / launch / "examples.json").write_text(json.dumps(examples))
    (tmp / "dpo").mkdir()
    make_data_dir(world_dir, vary_k(make_comparisons(world)), tmp / "dpo" / "data")
    spawn(on_rank, tmp / "policy", world_dir, tmp)
    return tmp


@pytest.mark.slow
def test_gradients_are_summed_over_ranks_and_a_parameter_no_rank_used_keeps_none(two_ranks):
    for rank in range(WORLD):  # (grads_on_rank asserted the None on each rank)
        grads = load_file(two_ranks / f"grads{rank}.safetensors")
        assert torch.equal(grads["both"], torch.full((3,), 3.0)) and torch.equal(grads["one"], torch.arange(3.0))


@pytest.mark.slow
@pytest.mark.parametrize("launch", LOOP_LAUNCHES)
def test_the_training_loop_on_two_ranks_equals_one_process_and_resumes_on_any_number(two_ranks, launch):
    """The same global batches of 4 (one rank idle on each epoch's last, of 1 example, which under FSDP takes a
    stand-in pass; token shares unequal): 2 ranks, plain or sharded, end with 1 process's weights and losses;
    stopped by a Ctrl-C on one rank and resumed, on 2 ranks or on 1, they end where the uninterrupted run did."""
    tmp = two_ranks / launch
    examples = lm_examples(tmp)
    model, tokenizer = load_policy(str(two_ranks / "policy"))
    start = {k: v.clone() for k, v in model.state_dict().items()}
    train_loop(model, tokenizer, examples, lm_config(tmp / "one"), lm_loss_with_a_metric(tokenizer, {}))
    expected = model.state_dict()
    assert max((expected[k] - v).abs().max().item() for k, v in start.items()) > 1e-2  # >> the tolerance
    ranks = [load_file(tmp / f"rank{r}.safetensors") for r in range(WORLD)]
    for name, value in expected.items():
        torch.testing.assert_close(ranks[0][f"full.{name}"], value, rtol=1e-5, atol=1e-5, msg=name)
        for run in ("full", "resumed"):
            assert torch.equal(ranks[1][f"{run}.{name}"], ranks[0][f"{run}.{name}"]), f"{run}: the ranks diverged"
        torch.testing.assert_close(ranks[0][f"resumed.{name}"], ranks[0][f"full.{name}"], rtol=0, atol=1e-6)
        if launch == "train_loop-zero3":  # a plain run's checkpoint, continued under ZeRO-3
            torch.testing.assert_close(ranks[0][f"from-plain.{name}"], value, rtol=1e-5, atol=1e-5, msg=name)
    one_log, two_log = learning_log(tmp / "one" / "train.csv"), learning_log(tmp / "full" / "train.csv")
    assert len(two_log) == len(one_log) == 12  # rank 0 alone logs
    for a, b in zip(one_log, two_log):
        for metric in ("loss", "nll", "grad_norm"):
            assert float(b[metric]) == pytest.approx(float(a[metric]), rel=1e-5), (a["step"], metric)
    assert learning_log(tmp / "stopped" / "train.csv") == two_log
    assert not (tmp / "full" / "run.lock").exists()

    # the data order does not depend on the ranks: one process continues the 2 ranks' checkpoint of step 3
    model, tokenizer = load_policy(str(two_ranks / "policy"))
    train_loop(model, tokenizer, examples, lm_config(tmp / "stopped-then-1-process"),
               lm_loss_with_a_metric(tokenizer, {}))
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, ranks[0][f"full.{name}"], rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.slow
def test_dpo_on_two_ranks_equals_one_process(two_ranks):
    """DPO's loss is a mean over prompts: 2 ranks of 4 prompts each take one process's steps of 8. Rank 0
    evaluates and writes; every rank returns its result."""
    tmp = two_ranks / "dpo"
    one = dpo(dpo_config(two_ranks / "policy", tmp, "one"))
    results = [json.loads((tmp / f"result{r}.json").read_text()) for r in range(WORLD)]
    assert results[0] == results[1] == json.loads((tmp / "two" / "result.json").read_text())
    assert one["steps"] == results[0]["steps"] == 10 and one["test_accuracy"] > 0.6
    assert results[0] == pytest.approx(one, rel=1e-4, abs=1e-6)
    # The logged metrics too: the loss a mean over prompts, accuracy and rewards over pairs (K varies).
    logs = [learning_log(tmp / run / "train.csv") for run in ("one", "two")]
    assert [row.keys() for row in logs[0]] == [row.keys() for row in logs[1]] and "accuracy" in logs[0][0]
    for a, b in zip(*logs):
        for key in ("loss", "accuracy", "chosen_reward", "rejected_reward", "margin"):
            assert float(b[key]) == pytest.approx(float(a[key]), rel=1e-4, abs=1e-6), key
    expected, _ = load_policy(str(tmp / "one" / "final"))
    got, _ = load_policy(str(tmp / "two" / "final"))
    initial, _ = load_policy(str(two_ranks / "policy"))
    moved = max((a - b).abs().max().item() for a, b in zip(expected.parameters(), initial.parameters()))
    assert moved > 1e-2  # >> the tolerance
    for (name, a), b in zip(expected.named_parameters(), got.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5, msg=name)

    # Sharded (FSDP, ZeRO-3), the same: every step's passes agreed between the ranks, and some rank made stand-ins.
    for launch in ("fsdp", "zero3"):
        sharded = [json.loads((tmp / f"result{r}-{launch}.json").read_text()) for r in range(WORLD)]
        passes = [sharded[r].pop("passes") for r in range(WORLD)]
        assert len(passes[0]) == len(passes[1]) == 10, launch
        assert all(a[1] == b[1] == max(a[0], b[0]) for a, b in zip(*passes)), launch
        assert any(a[0] != b[0] for a, b in zip(*passes)), launch
        assert sharded[0] == sharded[1] == pytest.approx(one, rel=1e-4, abs=1e-6), launch
        got, _ = load_policy(str(tmp / f"two-{launch}" / "final"))
        for (name, a), b in zip(expected.named_parameters(), got.parameters()):  # atol: Adam's step on a gradient
            torch.testing.assert_close(b, a, rtol=1e-5, atol=3e-5, msg=f"{launch} {name}")  # near 0 spreads rounding
        for a, b in zip(logs[0], learning_log(tmp / f"two-{launch}" / "train.csv"), strict=True):
            for key in ("loss", "grad_norm"):  # the gradient's scale too, which Adam's step nearly ignores
                assert float(b[key]) == pytest.approx(float(a[key]), rel=1e-4, abs=1e-6), (launch, key)


@pytest.mark.slow
def test_an_iteration_on_two_ranks_equals_one_process_on_the_same_global_batch(two_ranks, world_dir):
    """The same 8 episodes (sampled once, then replayed: rank r gets rows 4r .. 4r + 3, one process all 8) in
    minibatches of 4 over 2 epochs: 2 ranks end with 1 process's weights and metrics, and with the same weights."""
    for case in CASES:
        tmp = two_ranks / "iteration" / case
        one = make(case, two_ranks / "policy", world_dir, tmp / "one")
        start = weights(one)
        episodes = load_file(tmp / "episodes.safetensors")
        assert episodes["env_rewards"].std() > 0.05 and episodes["response_mask"].sum(1).unique().numel() > 4
        replay(one, episodes, slice(None))
        metrics, _ = one.iterate(None)
        expected = weights(one)
        assert max((expected[k] - v).abs().max().item() for k, v in start.items()) > 1e-3, case  # >> the tolerance
        ranks = [load_file(tmp / f"rank{r}.safetensors") for r in range(WORLD)]
        for name, value in expected.items():
            where = f"{case} {name}"
            torch.testing.assert_close(ranks[0][name], value, rtol=1e-5, atol=1e-5,
                                       msg=lambda m, where=where: f"{where}: {m}")
            assert torch.equal(ranks[1][name], ranks[0][name]), f"{case}: the ranks diverged"
        rank_metrics = json.loads((tmp / "rank0.json").read_text())
        assert set(rank_metrics) == set(metrics), case  # every metric, gathered over the ranks
        learning = {k: v for k, v in metrics.items() if not k.startswith("time_")}
        # abs: pg_loss is a small mean of terms that nearly cancel, whose float32 rounding differs on 2 ranks
        assert {k: rank_metrics[k] for k in learning} == pytest.approx(learning, rel=1e-4, abs=5e-6), case


@pytest.mark.slow
@pytest.mark.parametrize("launch", ["resume", "resume-fsdp", "resume-fsdp-gae", "resume-zero2", "resume-zero3-gae"])
def test_a_two_rank_run_stopped_and_resumed_matches_an_uninterrupted_one(two_ranks, world_dir, launch):
    """Plain data parallelism, FSDP and DeepSpeed ZeRO-2 (leave-one-out), FSDP and ZeRO-3 (GAE with a value head,
    whose (1, H) weight leaves rank 1 an empty shard, and whose bias is smaller than the ranks): the sharded run's
    checkpoint holds full tensors, which one process resumes unsharded."""
    tmp = two_ranks / launch
    overrides = json.loads((tmp / "overrides.json").read_text())
    ranks = [load_file(tmp / f"rank{r}.safetensors") for r in range(WORLD)]
    full = [name for name in ranks[0] if name.startswith("full.")]
    assert full
    for name in full:
        value = ranks[0][name]
        assert torch.equal(ranks[1][name], value), name  # the ranks stay in sync
        resumed = "resumed." + name.removeprefix("full.")
        torch.testing.assert_close(ranks[0][resumed], value, rtol=0, atol=1e-6, msg=name)
    full_log, resumed_log = (learning_log(tmp / run / "train.csv") for run in ("full", "stopped"))
    assert len(full_log) == 4 and len(resumed_log) == 4  # rank 0 alone logs
    for a, b in zip(full_log, resumed_log):
        assert {k: v for k, v in a.items() if not k.startswith("time_")} == {
            k: v for k, v in b.items() if not k.startswith("time_")}
    assert not any((tmp / run / "run.lock").exists() for run in ("full", "stopped"))

    # The checkpoint holds both ranks' envs, which draw different prompts (a seed stream per rank) ...
    saved = json.loads((tmp / "stopped-then-1-process" / "checkpoint" / "state.json").read_text())["state"]
    assert saved["iteration"] == 2 and saved["world_size"] == 2 and len(saved["rank_envs"]) == 1
    assert saved["env"]["prompt_index"] != saved["rank_envs"][0]["prompt_index"]
    # ... and one process continues it from iteration 2, with fresh seed streams
    one = PPOAgent(resume_config(two_ranks / "policy", world_dir, tmp / "stopped-then-1-process", **overrides))
    with pytest.warns(RuntimeWarning, match="saved by 2 ranks, resumed on 1"):
        one.train()
    log = learning_log(tmp / "stopped-then-1-process" / "train.csv")
    assert [row["step"] for row in log] == ["1", "2", "3", "4"] and log[:2] == resumed_log[:2]
    same = {"resume-fsdp": "resume", "resume-zero2": "resume", "resume-zero3-gae": "resume-fsdp-gae"}
    if launch in same:  # the same run unsharded (or under FSDP): each rollout sampled the updated weights
        plain = load_file(two_ranks / same[launch] / "rank0.safetensors")
        for name in full:
            torch.testing.assert_close(ranks[0][name], plain[name], rtol=1e-5, atol=1e-5, msg=name)


def launcher_env(monkeypatch, env: dict) -> None:
    """Exactly ``env`` of the launcher's settings, on 2 ranks, whatever the shell has set."""
    for name in [*os.environ]:
        if name.startswith(("FSDP_", "ACCELERATE_USE_", "ACCELERATE_DEEPSPEED_", "ACCELERATE_GRADIENT_",
                            "ACCELERATE_MIXED_PRECISION")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("WORLD_SIZE", "2")
    for name, value in env.items():
        monkeypatch.setenv(name, value)


@pytest.mark.parametrize("env, expected", [
    ({}, None),
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}, True),
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_RESHARD_AFTER_FORWARD": "false"}, False),
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_SHARDING_STRATEGY": "SHARD_GRAD_OP"}, False),
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_SHARDING_STRATEGY": "1"}, True),
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_SHARDING_STRATEGY": "NO_SHARD"}, None),
    # FSDP1 as `accelerate config` writes it: the strategy under fsdp_reshard_after_forward
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1", "FSDP_RESHARD_AFTER_FORWARD": "shard_grad_op"}, False),
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1", "FSDP_RESHARD_AFTER_FORWARD": "NO_SHARD"}, None),
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1", "FSDP_RESHARD_AFTER_FORWARD": "full_shard"}, True),
])
def test_the_launchers_fsdp_settings_choose_the_sharding(monkeypatch, env, expected):
    launcher_env(monkeypatch, env)
    assert sharding.requested() is expected


@pytest.mark.parametrize("env, message", [
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_OFFLOAD_PARAMS": "true"}, r"parameter offload \(fsdp_offload_params\)"),
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_ACTIVATION_CHECKPOINTING": "true"}, "activation checkpointing"),
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_SHARDING_STRATEGY": "HYBRID_SHARD"}, "HYBRID_SHARD is not supported"),
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_RESHARD_AFTER_FORWARD": "hybrid_shard"}, "HYBRID_SHARD is not supported"),
])
def test_launcher_settings_the_agents_cannot_honour_are_refused(monkeypatch, env, message):
    launcher_env(monkeypatch, env)
    with pytest.raises(ValueError, match=message):
        sharding.requested()


@pytest.mark.parametrize("env, stage", [
    ({}, None),
    ({"ACCELERATE_USE_DEEPSPEED": "true"}, 2),  # accelerate's default stage
    ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3",
      "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE": "none", "ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "1"}, 3),
    ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "1"}, 1),
])
def test_the_launchers_deepspeed_settings_choose_the_zero_stage(monkeypatch, env, stage):
    launcher_env(monkeypatch, env)
    assert zero.requested() == (None if stage is None else {"stage": stage})


DEEPSPEED = {"ACCELERATE_USE_DEEPSPEED": "true"}


def test_a_deepspeed_release_other_than_the_tested_one_is_warned_of():
    import importlib.metadata
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        zero.check_version("0.19.3")  # the tested release: silent
        zero.check_version(importlib.metadata.version("deepspeed"))  # the one setup.py's extras install
    for other in ("0.20.0", "0.18.9", "1.19.0"):
        with pytest.warns(UserWarning, match=rf"DeepSpeed {other}: .* tested with 0\.19 only"):
            zero.check_version(other)


@pytest.mark.parametrize("env, message", [
    ({**DEEPSPEED, "ACCELERATE_DEEPSPEED_ZERO_STAGE": "0"}, "ZeRO stage 0 is not supported"),
    ({**DEEPSPEED, "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE": "cpu"}, 'offload_optimizer_device "cpu"'),
    ({**DEEPSPEED, "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE": "nvme"}, 'offload_param_device "nvme"'),
    ({**DEEPSPEED, "ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "4"}, r'gradient_accumulation_steps "4".*global one'),
    ({**DEEPSPEED, "ACCELERATE_GRADIENT_CLIPPING": "0.5"}, r'gradient_clipping "0.5".*--max_grad_norm'),
    ({**DEEPSPEED, "ACCELERATE_DEEPSPEED_ZERO3_INIT": "true"}, 'zero3_init_flag "true"'),
    ({**DEEPSPEED, "ACCELERATE_MIXED_PRECISION": "bf16"}, r'mixed_precision "bf16".*--bf16'),
])
def test_deepspeed_settings_the_loops_cannot_honour_are_refused(monkeypatch, env, message):
    launcher_env(monkeypatch, env)
    with pytest.raises(ValueError, match=message):
        zero.requested()


def test_fsdp_and_deepspeed_at_once_are_refused(monkeypatch):
    from rlhf_env.training.parallel import Training

    launcher_env(monkeypatch, {**DEEPSPEED, **FSDP})
    with pytest.raises(ValueError, match="both FSDP and DeepSpeed"):
        Training()


def test_a_deepspeed_config_without_deepspeed_installed_says_how_to_get_it(monkeypatch):
    launcher_env(monkeypatch, DEEPSPEED)
    with mock.patch("importlib.util.find_spec", return_value=None), \
            pytest.raises(ImportError, match=r"pip install deepspeed \(or this package's \[deepspeed\] extra\)"):
        zero.requested()


@pytest.mark.parametrize("config, expected", [
    ({"zero_optimization": {"stage": 3}, "gradient_clipping": "auto", "train_batch_size": "auto"}, {"stage": 3}),
    ({"zero_optimization": {"stage": 2, "reduce_bucket_size": 1000, "offload_optimizer": {"device": "none"}},
      "bf16": {"enabled": False}}, {"stage": 2, "reduce_bucket_size": 1000}),
    ({"zero_optimization": {"stage": 2}, "optimizer": {"type": "AdamW"}}, r"optimizer \{.*the loops' own AdamW"),
    ({"zero_optimization": {"stage": 2}, "gradient_accumulation_steps": 8}, "gradient_accumulation_steps 8"),
    ({"zero_optimization": {"stage": 2}, "fp16": {"enabled": True}}, r'mixed_precision "fp16".*--bf16'),
    ({"zero_optimization": {"stage": 3, "offload_param": {"device": "cpu"}}}, 'offload_param_device "cpu"'),
    ({"zero_optimization": {"stage": 2}, "gradient_clipping": 1.0}, r"gradient_clipping 1.0.*--max_grad_norm"),
    ({"zero_optimization": {"stage": 0}}, "ZeRO stage 0 is not supported"),
    ({"train_batch_size": "auto"}, "ZeRO stage missing is not supported"),
])
def test_a_deepspeed_config_file_is_read_and_its_settings_checked(monkeypatch, tmp_path, config, expected):
    """accelerate's deepspeed_config_file: its ZeRO settings, and what the loops do themselves refused."""
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(config))
    launcher_env(monkeypatch, {**DEEPSPEED, "ACCELERATE_DEEPSPEED_CONFIG_FILE": str(path)})
    if isinstance(expected, dict):
        assert zero.requested() == expected
    else:
        with pytest.raises(ValueError, match=expected):
            zero.requested()


def test_a_global_batch_that_does_not_split_into_whole_groups_per_rank_is_refused(tiny_policy_dir, world_dir,
                                                                                   tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")  # as a launcher sets it; refused before joining any process group
    with pytest.raises(ValueError, match=r"batch_size \(8\) is the global batch: it must split into 2 ranks'"):
        PPOAgent(tiny_config(tiny_policy_dir, world_dir, tmp_path / "ppo", batch_size=8, group_size=8,
                             minibatch_size=8))
    with pytest.raises(ValueError, match=r"batch_size \(7\) is the global batch"):
        REINFORCEAgent(REINFORCEConfig(**{**vars(tiny_config(tiny_policy_dir, world_dir, tmp_path / "re")),
                                          "batch_size": 7, "group_size": 1, "minibatch_size": 7}))


@pytest.mark.slow
@pytest.mark.parametrize("config, command", [("fsdp", "ppo"), ("fsdp", "dpo"), ("deepspeed", "ppo")])
def test_the_example_configs_launch_a_sharded_run(tiny_policy_dir, world, world_dir, tmp_path, config, command):
    """`accelerate launch --config_file examples/accelerate/fsdp.yaml (or deepspeed.yaml) $(which rlhf) ppo|dpo
    ...`, as the docs say, on this CPU: 2 ranks, sharded, to the end."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    rlhf = shutil.which("rlhf", path=str(Path(sys.executable).parent))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    how = {"fsdp": "FSDP2, reshard_after_forward=True", "deepspeed": "DeepSpeed ZeRO-2"}[config]
    config = Path(__file__).resolve().parents[1] / "examples" / "accelerate" / f"{config}.yaml"
    out = tmp_path / command
    flags = {"ppo": ["--reward", "gold", "--iterations", "2", "--batch_size", "8", "--group_size", "4",
                     "--minibatch_size", "4", "--ppo_epochs", "1", "--max_new_tokens", "8", "--eval_every", "0",
                     "--final_eval_episodes", "8"],
             "dpo": ["--epochs", "0.4", "--batch_size", "8", "--evals", "1"]}[command]
    data = world_dir
    if command == "dpo":  # the tiny world has no comparisons: the DPO tests' own
        data = tmp_path / "data"
        make_data_dir(world_dir, make_comparisons(world), data)
    done = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "--main_process_port",
         str(port), rlhf, command, "--policy", str(tiny_policy_dir), "--data", str(data), "--out", str(out),
         *flags], capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{command}: sharded over 2 ranks ({how})" in done.stderr
    steps = 2 if command == "ppo" else 4  # DPO: 0.4 of an epoch's 10 batches
    assert json.loads((out / "result.json").read_text())["total_steps" if command == "ppo" else "steps"] == steps
    assert learning_log(out / "train.csv")[-1]["step"] == str(steps)
