"""Sequence packing (``rlhf_env.packing``): the layout, the models it allows, and the same log-probs, hidden
states, values and gradients as the padded forward."""

import pytest
import torch

from rlhf_env import packing
from rlhf_env.packing import first_fit_decreasing, packs, plan, response_hidden
from rlhf_env.sampling import encode_prompts, response_log_softmax

PROMPTS = ["Q: what is 3 plus 4 ?\nA:", "Q: sort : fig apple pear cup door egg .\nA:", "Q: hi\nA:",
           "Q: reverse : a b c\nA:", "Q: count the words : one two three four five six\nA:"]


def batch(tokenizer, rows: int = 10, R: int = 9, seed: int = 0):
    """Left-padded prompts with right-padded responses of seeded random lengths, as an update's minibatch."""
    g = torch.Generator().manual_seed(seed)
    prompt_ids, prompt_mask = encode_prompts(tokenizer, PROMPTS)
    which = torch.randint(len(PROMPTS), (rows,), generator=g)
    response_mask = (torch.arange(R)[None] < torch.randint(1, R + 1, (rows, 1), generator=g)).long()
    response_ids = torch.where(response_mask.bool(), torch.randint(5, len(tokenizer), (rows, R), generator=g),
                               tokenizer.pad_token_id)
    return torch.cat([prompt_ids[which], response_ids], 1), torch.cat([prompt_mask[which], response_mask], 1), R


def test_a_shared_plan_lays_each_prompt_once_then_its_rows_responses():
    pad = 0
    ids = torch.tensor([[11, 12, 21, 22],  # prompt A, response 2
                        [11, 12, 23, pad],  # prompt A, response 1
                        [pad, 13, 24, 25]])  # prompt B (1 token), response 2
    p = packing.shared_plan(ids, (ids != pad).long(), R=2)
    assert p.ids.tolist() == [[11, 12, 21, 22, 23, 13, 24, 25]]
    assert p.position_ids.tolist() == [[0, 1, 2, 3, 2, 0, 1, 2]]  # a response continues its prompt's positions
    assert p.starts.tolist() == [0, 2, 4, 5, 6, 8] and p.groups.tolist() == [0, 3, 5]
    # the positions predicting each row's 2 tokens and the next; past a response, its last real one
    assert p.index.tolist() == p.real_index.tolist() == [[1, 2, 3], [1, 4, 4], [5, 6, 7]]
    assert p.real.tolist() == list(range(8))
    holes = (ids != pad).long()
    holes[0, 2] = 0  # a response with a hole
    assert packing.shared_plan(ids, holes, R=2) is None


def test_first_fit_decreasing_places_the_longest_first_into_the_first_row_with_room():
    # 5 opens row 0, 4 row 1, 3 row 2; 2 fits only after the 3, 1 after the 4
    assert first_fit_decreasing([3, 5, 2, 4, 1], 5) == [(2, 0), (0, 0), (2, 3), (1, 0), (1, 4)]


def test_a_plan_puts_each_rows_real_tokens_end_to_end_and_indexes_its_predicting_positions():
    pad = 0
    ids = torch.tensor([[pad, 11, 12, 21, 22, pad],  # prompt 2, response 2
                        [pad, pad, 13, 23, pad, pad],  # prompt 1, response 1
                        [14, 15, 16, 24, 25, 26]])  # prompt 3, response 3
    mask = (ids != pad).long()
    p = plan(ids, mask, R=3)
    # capacity 6: row 2 fills packed row 0; rows 0 (4 tokens) and 1 (2 tokens) share packed row 1
    assert p.ids.tolist() == [[14, 15, 16, 24, 25, 26], [11, 12, 21, 22, 13, 23]]
    assert p.position_ids.tolist() == [[0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 0, 1]]
    # row 0 starts at flat 6: its prompt's last token (flat 7) predicts the first response token; past the
    # response, its last real token (flat 9)
    assert p.index.tolist() == [[7, 8, 9, 9], [10, 11, 11, 11], [2, 3, 4, 5]]
    # the real tokens row by row (row 0's, row 1's, row 2's), and the same predicting positions among them
    assert p.real.tolist() == [6, 7, 8, 9, 10, 11, 0, 1, 2, 3, 4, 5]
    assert p.real_index.tolist() == [[1, 2, 3, 3], [4, 5, 5, 5], [8, 9, 10, 11]]


def test_a_plans_real_tokens_leave_out_the_padding_that_ends_a_packed_row():
    pad = 0
    ids = torch.tensor([[pad, 11, 12, 21, pad],  # prompt 2, response 1: fills packed row 0 (capacity 3)
                        [pad, pad, 13, 23, pad]])  # prompt 1, response 1: packed row 1, then one padding position
    p = plan(ids, (ids != pad).long(), R=2)
    assert p.ids.tolist() == [[11, 12, 21], [13, 23, 11]]  # the padding repeats a real token
    assert p.position_ids.tolist() == [[0, 1, 2], [0, 1, 0]]
    assert p.real.tolist() == [0, 1, 2, 3, 4]  # not flat 5
    assert p.index.tolist() == p.real_index.tolist() == [[1, 2, 2], [3, 4, 4]]


def test_no_plan_where_it_saves_too_little_or_a_row_cannot_be_packed():
    ids = torch.tensor([[11, 12, 21, 22], [13, 14, 23, 24]])
    assert plan(ids, torch.ones_like(ids), R=2) is None  # no padding: nothing to save
    ids = torch.tensor([[0, 0, 11, 21, 0, 0], [0, 0, 12, 22, 0, 0], [0, 0, 13, 23, 0, 0]])
    assert plan(ids, (ids != 0).long(), R=3) is not None
    assert plan(ids, torch.tensor([[0, 0, 0, 1, 0, 0]] * 3), R=3) is None  # no prompt token before a response
    holes = (ids != 0).long()
    holes[0, 0] = 1  # a row whose real tokens are not contiguous
    assert plan(ids, holes, R=3) is None


def llama(tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                        pad_token_id=tokenizer.pad_token_id)).train()


@pytest.mark.parametrize("kind", ["gpt2", "torch-gpt2", "llama"])
def test_packed_rows_get_the_padded_forwards_log_probs_hidden_states_and_gradients(tiny_model, tokenizer, kind,
                                                                                   tmp_path, monkeypatch):
    """HF's GPT-2 (learned positions), the envs' torch-only GPT-2 (its own packed mask) and a Llama (rotary
    positions, grouped-query attention): a spy checks that the packed forward ran on fewer positions than the
    padded one."""
    from rlhf_env.accel.gpt2 import load_torch_gpt2
    from rlhf_env.models import save_policy

    model = tiny_model.train()
    if kind == "torch-gpt2":
        save_policy(tiny_model, tokenizer, tmp_path / "policy")
        model = load_torch_gpt2(tmp_path / "policy").requires_grad_(True)
    elif kind == "llama":
        model = llama(tokenizer)
    hidden = {} if kind == "torch-gpt2" else {"output_hidden_states": True}  # (no such output)
    ids, mask, R = batch(tokenizer)
    real = mask[:, -R:].bool()
    shapes, plain_plan = [], packing.plan
    monkeypatch.setattr(packing, "plan", lambda *a, **k: shapes.append(tuple(plain_plan(*a, **k).ids.shape))
                        or plain_plan(*a, **k))
    results = []
    for pack in (False, True):
        model.zero_grad()
        logp, out = response_log_softmax(model, ids, mask, R, 0.7, share_prompts=False, pack=pack, **hidden)
        (logp.gather(2, ids[:, -R:, None]).squeeze(2) * real).sum().backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters()}
        results.append((logp, out.hidden_states[-1][:, -R - 1:-1] if hidden else logp, grads))
    (padded, padded_states, padded_grads), (packed, packed_states, packed_grads) = results
    assert len(shapes) == 1 and shapes[0][0] * shapes[0][1] < 0.7 * ids.numel()  # packed, on far fewer positions
    torch.testing.assert_close(packed[real], padded[real], atol=2e-5, rtol=0)
    torch.testing.assert_close(packed_states[real], padded_states[real], atol=2e-5, rtol=0)
    assert max(g.abs().max().item() for g in padded_grads.values()) > 1.0  # >> the tolerance
    for name, grad in padded_grads.items():
        torch.testing.assert_close(packed_grads[name], grad, atol=1e-4, rtol=1e-4, msg=name)


def test_a_critic_gets_the_same_values_and_gradients_packed(tokenizer):
    from transformers import GPT2Config, GPT2ForSequenceClassification

    from agents.policy import Critic

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, num_labels=1, resid_pdrop=0,
                        embd_pdrop=0, attn_pdrop=0, pad_token_id=tokenizer.pad_token_id)
    critic = Critic(GPT2ForSequenceClassification(config))
    ids, mask, R = batch(tokenizer, seed=1)
    real = mask[:, -R:].bool()
    assert plan(ids, mask, R) is not None and packs(critic.model)
    results = []
    for pack in (False, True):
        critic.zero_grad()
        values = critic(ids, mask, R, pack=pack)
        (values * real).pow(2).sum().backward()
        results.append((values, {n: p.grad.clone() for n, p in critic.named_parameters()}))
    (padded, padded_grads), (packed, packed_grads) = results
    torch.testing.assert_close(packed[real], padded[real], atol=2e-5, rtol=0)
    for name, grad in padded_grads.items():
        torch.testing.assert_close(packed_grads[name], grad, atol=1e-4, rtol=1e-4, msg=name)


def test_a_model_whose_logits_are_not_its_heads_or_whose_trunk_mixes_packed_rows_is_not_packed(tiny_model,
                                                                                               tokenizer,
                                                                                               monkeypatch):
    from transformers import GPT2LMHeadModel

    class Scaled(GPT2LMHeadModel):  # logits post-processed after the head, as a soft-capped model's are
        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            out.logits = 2 * out.logits
            return out

    scaled = Scaled(tiny_model.config)
    scaled.load_state_dict(tiny_model.state_dict())
    assert packs(tiny_model, lm_head=True) and packs(scaled) and not packs(scaled, lm_head=True)
    ids, mask, R = batch(tokenizer)
    real = mask[:, -R:].bool()
    expected = response_log_softmax(scaled, ids, mask, R, share_prompts=False, pack=False)[0]
    logp = response_log_softmax(scaled, ids, mask, R, share_prompts=False)[0]  # falls back to the padded forward
    torch.testing.assert_close(logp, expected)
    with monkeypatch.context() as m:  # packed anyway, the logits miss the post-processing: the check is needed
        m.setattr(packing, "packs", lambda *args: True)
        forced = response_log_softmax(scaled, ids, mask, R, share_prompts=False)[0]
    assert (forced - expected)[real].abs().max() > 0.1

    class Mixing(torch.nn.Module):  # a trunk that ignores position ids: packed rows would see each other
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, position_ids=None, attention_mask=None, **kwargs):
            return self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    class Wrapped(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.base_model, self.config = Mixing(model.base_model), model.config

    wrapped = Wrapped(tiny_model)
    assert not packs(wrapped)
    padded = response_hidden(wrapped, ids, mask, R, pack=False)
    torch.testing.assert_close(response_hidden(wrapped, ids, mask, R), padded)
    with monkeypatch.context() as m:  # packed anyway, rows see each other: the check is needed
        m.setattr(packing, "packs", lambda *args: True)
        assert (response_hidden(wrapped, ids, mask, R) - padded)[:, :-1][real].abs().max() > 0.1
