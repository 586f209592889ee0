"""The LM training stages: SFT lowers the loss, prompts are masked, and runs resume exactly."""

import os

import pytest
import torch

from rlhf_env.models import load_policy, new_model
from rlhf_env.stages.pretrain import PretrainConfig, pack, pretrain
from rlhf_env.stages.sft import SFTConfig, demonstration_examples, sft
from rlhf_env.training.checkpoint import find_checkpoint
from rlhf_env.training.trainer import IGNORE, TrainConfig, collate, lm_loss, train_causal_lm
from tests.conftest import TINY_DIMS, learning_log


def mean_loss(model, examples, pad_id):
    with torch.no_grad():
        return lm_loss(model.eval(), *collate(examples, pad_id)).item()


def test_demonstration_examples_mask_the_prompt(world, tokenizer):
    rows = world["demonstrations"]["train"].select(range(4))
    for (ids, labels), prompt, response in zip(demonstration_examples(rows, tokenizer), rows["prompt"],
                                               rows["response"]):
        n_prompt = len(tokenizer(prompt)["input_ids"])
        assert labels[:n_prompt] == [IGNORE] * n_prompt
        assert labels[n_prompt:] == ids[n_prompt:] and ids[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(ids[n_prompt:-1]) == " " + response


def test_pack_makes_full_blocks_separated_by_eos(world, tokenizer):
    blocks = pack(world["pretrain"]["text"][:40], tokenizer, block=64)
    assert blocks and all(len(x) == 64 and x == y for x, y in blocks)
    assert tokenizer.eos_token_id in blocks[0][0] + blocks[1][0]


@pytest.mark.slow
@pytest.mark.parametrize("evals", [2, 0])  # 0: only at the end
def test_a_few_sft_steps_reduce_the_loss(world, world_dir, tiny_policy_dir, tokenizer, tmp_path, evals):
    examples = demonstration_examples(world["demonstrations"]["train"], tokenizer)
    model, _ = load_policy(str(tiny_policy_dir))
    before = mean_loss(model, examples[:64], tokenizer.pad_token_id)
    state = sft(SFTConfig(base=str(tiny_policy_dir), data=str(world_dir), out=str(tmp_path / "sft"),
                          epochs=2, batch_size=16, lr=3e-3, evals=evals, n_valid=8))
    after_model, _ = load_policy(str(tmp_path / "sft" / "final"))
    after = mean_loss(after_model, examples[:64], tokenizer.pad_token_id)
    assert after < 0.8 * before
    assert state["best_step"] is not None and (tmp_path / "sft" / "best" / "model.safetensors").exists()
    assert (tmp_path / "sft" / "eval.csv").read_text().count("\n") == 1 + max(evals, 1)  # header + evaluations


@pytest.mark.parametrize("field, value", [("evals", -1), ("n_valid", 0)])
def test_sft_settings_out_of_range_are_refused_before_anything_loads(field, value):
    with pytest.raises(ValueError, match=f"^{field} must be"):
        SFTConfig(base="no/such/base", **{field: value})


@pytest.mark.slow
def test_pretraining_reduces_the_loss(world_dir, tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path / "tok")
    config = PretrainConfig(size={"n_embd": 32, "n_layer": 2, "n_head": 2}, data=str(world_dir),
                            tokenizer=str(tmp_path / "tok"), out=str(tmp_path / "base"), epochs=2, batch_size=8,
                            lr=3e-3, log_every=5)
    pretrain(config)
    losses = [float(line.split(",")[1]) for line in (tmp_path / "base" / "train.csv").read_text().split()[1:]]
    assert losses[-1] < 0.7 * losses[0]


def test_resumed_run_matches_an_uninterrupted_one(world, tokenizer, tmp_path):
    """Kill a run mid-way and resume it: same weights, same logs, as a run that was never killed.

    The model has dropout, so the RNG state must be restored too."""
    examples = demonstration_examples(world["demonstrations"]["train"].select(range(96)), tokenizer)
    config = dict(epochs=2, batch_size=16, save_every=4, log_every=1, lr=3e-3)
    torch.manual_seed(0)
    model = new_model(TINY_DIMS, tokenizer, resid_pdrop=0.2)
    initial = {k: v.clone() for k, v in model.state_dict().items()}

    train_causal_lm(model, tokenizer, examples, TrainConfig(out=str(tmp_path / "full"), **config))
    full = {k: v.clone() for k, v in model.state_dict().items()}

    class Crash(Exception):
        pass

    def crash(metrics):  # raise from inside the loop at step 7, after the step-4 checkpoint
        raise Crash("killed at step 7")

    model.load_state_dict(initial)
    killed = TrainConfig(out=str(tmp_path / "killed"), eval_every=7, **config)
    with pytest.raises(Crash, match="killed at step 7"):
        train_causal_lm(model, tokenizer, examples, killed, evaluate=crash)
    assert (tmp_path / "killed" / "checkpoint" / "state.json").exists()

    model.load_state_dict(initial)  # as in a new process: the weights must come from the checkpoint
    torch.manual_seed(123)
    train_causal_lm(model, tokenizer, examples, TrainConfig(out=str(tmp_path / "killed"), **config))
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, full[k], rtol=0, atol=1e-6)
    log, full_log = (learning_log(tmp_path / run / "train.csv") for run in ("killed", "full"))
    assert [int(r["step"]) for r in log] == list(range(1, 13))  # no step lost or logged twice
    assert log == full_log


def test_resuming_with_other_settings_is_refused(world, tokenizer, tiny_model, tmp_path):
    examples = demonstration_examples(world["demonstrations"]["train"].select(range(64)), tokenizer)
    with pytest.raises(ValueError, match="crash"):
        train_causal_lm(tiny_model, tokenizer, examples, TrainConfig(out=str(tmp_path), batch_size=16, save_every=2,
                                                                     eval_every=3),
                        evaluate=lambda m: (_ for _ in ()).throw(ValueError("crash")))
    with pytest.raises(ValueError, match="different run"):
        train_causal_lm(tiny_model, tokenizer, examples, TrainConfig(out=str(tmp_path), batch_size=8))


def test_a_checkpoint_left_half_swapped_by_a_crash_is_found(tmp_path):
    old = tmp_path / "checkpoint.old"
    old.mkdir()
    (old / "state.json").write_text("{}")
    assert find_checkpoint(tmp_path / "checkpoint") == old
    assert find_checkpoint(tmp_path / "elsewhere") is None


def test_resident_memory_is_measured_now_and_logged_with_every_training_row(tmp_path):
    import mmap

    from rlhf_env.training.run import Run, resident_mb

    before = resident_mb()
    block = mmap.mmap(-1, 64 * 2**20)  # 64 MiB of new pages (not memory the allocator already holds), touched
    block.write(b"x" * len(block))
    during = resident_mb()
    block.close()
    assert during - before > 50 and resident_mb() < during - 50  # the current size, not the peak
    run = Run(tmp_path / "run", {"x": 1}, total=2, desc="test")
    run.start(0)
    run.log(1, {"loss": 0.5})
    run.log(1, {"gold": 0.9}, kind="eval")
    run.close()
    train = (tmp_path / "run" / "train.csv").read_text().splitlines()
    assert train[0] == "step,loss,rss_mb" and float(train[1].split(",")[2]) > 50
    assert "rss_mb" not in (tmp_path / "run" / "eval.csv").read_text()


def test_a_checkpoint_restores_each_gpus_rng_to_its_own_device_past_ten(tiny_model, tokenizer, tmp_path,
                                                                        monkeypatch):
    """Saved as rng.cuda.0 .. rng.cuda.10, restored in device order (as text, "10" would sort before "2")."""
    from rlhf_env.training.checkpoint import load_checkpoint, save_checkpoint

    states = [torch.full((4,), i, dtype=torch.uint8) for i in range(11)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: states)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.extend)
    optimizer = torch.optim.AdamW(tiny_model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    save_checkpoint(tmp_path / "checkpoint", tiny_model, tokenizer, optimizer, scheduler, {"step": 0})
    load_checkpoint(tmp_path / "checkpoint", tiny_model, optimizer, scheduler)
    assert [int(s[0]) for s in restored] == list(range(11))


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_saved_weights_get_the_mode_of_any_other_new_file(tiny_model, tokenizer, tmp_path, umask, mode):
    """safetensors alone writes its files readable by their owner only (0600): a checkpoint or saved policy
    shared with a group, or copied into a package, would be unreadable to the others."""
    from rlhf_env.models import save_policy
    from rlhf_env.training.checkpoint import save_checkpoint

    old = os.umask(umask)
    try:
        save_policy(tiny_model, tokenizer, tmp_path / "policy")
        optimizer = torch.optim.AdamW(tiny_model.parameters())
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        save_checkpoint(tmp_path / "checkpoint", tiny_model, tokenizer, optimizer, scheduler, {"step": 0})
    finally:
        os.umask(old)
    weights = [*(tmp_path / "policy").glob("*.safetensors"), *(tmp_path / "checkpoint").glob("*.safetensors")]
    assert {p.name for p in weights} == {"model.safetensors", "optimizer.safetensors", "extra.safetensors"}
    assert {oct(p.stat().st_mode & 0o777) for p in weights} == {oct(mode)}


def test_cpu_clipping_of_a_nan_gradient_is_clip_grad_norms():
    from rlhf_env.training.parallel import clip_cpu_grads

    ours, theirs = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(3))
    ours.grad, theirs.grad = torch.tensor([1.0, float("nan"), 2.0]), torch.tensor([1.0, float("nan"), 2.0])
    assert torch.isnan(clip_cpu_grads([ours], 1.0)) and torch.isnan(torch.nn.utils.clip_grad_norm_([theirs], 1.0))
    assert torch.isnan(ours.grad).all() and torch.isnan(theirs.grad).all()  # every gradient times NaN, as torch's


@pytest.mark.parametrize("max_norm", [0.5, 100.0])  # clipped, and within the norm (no multiplication)
def test_cpu_clipping_is_clip_grad_norms_bit_for_bit(max_norm):
    from rlhf_env.training.parallel import clip_cpu_grads

    generator = torch.Generator().manual_seed(0)
    ours = [torch.nn.Parameter(torch.zeros(shape)) for shape in [(7, 5), (5,), (3, 4, 2)]]
    theirs = [torch.nn.Parameter(torch.zeros(p.shape)) for p in ours]
    for a, b in zip(ours, theirs):
        a.grad = torch.randn(a.shape, generator=generator)
        b.grad = a.grad.clone()
    before = [p.grad.clone() for p in ours]
    ours.append(torch.nn.Parameter(torch.zeros(2)))  # a parameter without a gradient
    norm = clip_cpu_grads(ours, max_norm)
    assert torch.equal(norm, torch.nn.utils.clip_grad_norm_(theirs, max_norm)) and 1.0 < float(norm) < 100.0
    for a, b in zip(ours, theirs):
        assert torch.equal(a.grad, b.grad)
    assert all(torch.equal(p.grad, g) for p, g in zip(ours, before)) == (max_norm > 1)  # scaled only if clipped
