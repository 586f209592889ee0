"""The KV-cache sampler: deterministic, padding-invariant, and its log-probs are exact."""

import pytest
import torch

from rlhf_env.sampling import positions, sample

PROMPTS = ["Q: what is 3 plus 4 ?\nA:", "Q: sort : fig apple pear cup door egg .\nA:", "Q: hi\nA:"]


def full_forward_logprobs(model, s, temperature):
    """Recompute log pi(y_t | x, y_<t) with one forward over prompt + response."""
    ids = torch.cat([s.prompt_ids, s.response_ids], 1)
    mask = torch.cat([s.prompt_mask, s.response_mask], 1)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions(mask)).logits
    P = s.prompt_ids.shape[1]
    logp = torch.log_softmax(logits[:, P - 1:-1].float() / temperature, -1)
    return logp.gather(2, s.response_ids[..., None]).squeeze(2) * s.response_mask


def test_sampling_is_deterministic_per_seed(tiny_model, tokenizer):
    a = sample(tiny_model, tokenizer, PROMPTS, 12, 1.0, torch.Generator().manual_seed(3))
    b = sample(tiny_model, tokenizer, PROMPTS, 12, 1.0, torch.Generator().manual_seed(3))
    c = sample(tiny_model, tokenizer, PROMPTS, 12, 1.0, torch.Generator().manual_seed(4))
    assert torch.equal(a.response_ids, b.response_ids) and a.texts == b.texts
    assert not torch.equal(a.response_ids, c.response_ids)


def test_logprobs_match_a_full_forward(tiny_model, tokenizer):
    s = sample(tiny_model, tokenizer, PROMPTS, 12, 0.7, torch.Generator().manual_seed(0))
    torch.testing.assert_close(s.logprobs, full_forward_logprobs(tiny_model, s, 0.7), atol=1e-4, rtol=0)


def test_left_padding_does_not_change_a_row(tiny_model, tokenizer):
    batch = sample(tiny_model, tokenizer, PROMPTS, 10, temperature=0)
    for i, prompt in enumerate(PROMPTS):
        alone = sample(tiny_model, tokenizer, [prompt], 10, temperature=0)
        n = alone.response_ids.shape[1]
        assert torch.equal(batch.response_ids[i, :n], alone.response_ids[0])


class EosBoost(torch.nn.Module):
    """Wraps a model and raises the EOS logit, so that rows end at different steps."""

    def __init__(self, model, eos_id, boost):
        super().__init__()
        self.model, self.config, self.eos_id, self.boost = model, model.config, eos_id, boost

    def forward(self, cache=None, **kwargs):
        out = self.model(cache=cache, **kwargs)
        out.logits[..., self.eos_id] += self.boost
        return out


def test_eos_ends_a_row_and_everything_after_is_padding(tiny_model, tokenizer):
    eos = tokenizer.eos_token_id
    model = EosBoost(tiny_model, eos, boost=2.0)
    s = sample(model, tokenizer, PROMPTS * 4, 30, 1.0, torch.Generator().manual_seed(0))
    assert 0 < int(s.eos.sum()) < len(s.eos)  # some rows ended, some hit the budget
    for ids, mask, ended in zip(s.response_ids, s.response_mask, s.eos):
        real = int(mask.sum())
        if ended:
            assert ids[real - 1] == eos and (ids[real:] == tokenizer.pad_token_id).all()
        else:
            assert real == ids.shape[0] and eos not in ids.tolist()
    assert (s.logprobs[s.response_mask == 0] == 0).all()
    assert s.texts[0] == tokenizer.decode(s.response_ids[0][s.response_mask[0].bool()], skip_special_tokens=True)


def test_sampling_stops_when_every_row_has_ended(tiny_model, tokenizer):
    model = EosBoost(tiny_model, tokenizer.eos_token_id, boost=100.0)
    s = sample(model, tokenizer, PROMPTS, 30, 1.0, torch.Generator().manual_seed(0))
    assert s.response_ids.shape[1] == 1 and s.eos.all()


def test_a_tokenizer_whose_pad_is_eos_still_gets_exact_masks(tiny_model, tokenizer):
    """Many hub models (GPT-2) pad with EOS: only the first EOS of a row is a real token."""
    import copy

    same = copy.deepcopy(tokenizer)
    same.pad_token = same.eos_token
    s = sample(EosBoost(tiny_model, same.eos_token_id, boost=2.0), same, PROMPTS * 4, 30, 1.0,
               torch.Generator().manual_seed(0))
    assert 0 < int(s.eos.sum()) < len(s.eos)
    for ids, mask, ended in zip(s.response_ids, s.response_mask, s.eos):
        real = int(mask.sum())
        assert (ids[real - 1] == same.eos_token_id) == bool(ended)
        assert (ids[real:] == same.eos_token_id).all()


def test_draw_samples_the_given_distribution():
    from rlhf_env.sampling import draw

    probs = torch.tensor([0.1, 0.0, 0.2, 0.7])
    tokens = draw(probs.log().expand(40_000, 4), torch.Generator().manual_seed(0))
    freq = torch.bincount(tokens, minlength=4).float() / len(tokens)
    assert freq[1] == 0  # a zero-probability token is never drawn
    torch.testing.assert_close(freq, probs, atol=0.01, rtol=0)  # 0.01 is > 4 standard errors


@pytest.mark.parametrize("temperature", [1.0, 0.7, "per row"])
def test_the_c_draw_gives_torchs_tokens_and_log_probs(temperature):
    """``draw_logits`` (the C kernel) draws the tokens that ``draw_logits_torch`` draws from the same generator,
    with their log-probabilities to float rounding; a token of probability 0 (a -inf logit) is never drawn."""
    from rlhf_env.accel import native
    from rlhf_env.sampling import draw_logits, draw_logits_torch

    if native.library() is None:
        pytest.skip("no C compiler to build the kernels")
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(512, 300, generator=generator) * 4
    logits[:, 7] = float("-inf")
    temperature = (torch.rand(512, 1, generator=generator) + 0.5 if temperature == "per row"
                   else torch.tensor(temperature))
    ours = draw_logits(logits, temperature, torch.Generator().manual_seed(1))
    theirs = draw_logits_torch(logits, temperature, torch.Generator().manual_seed(1))
    assert torch.equal(ours[0], theirs[0]) and len(ours[0].unique()) > 100 and not (ours[0] == 7).any()
    torch.testing.assert_close(ours[1], theirs[1], rtol=1e-5, atol=1e-5)


def test_the_c_draw_refuses_rows_without_a_distribution():
    from rlhf_env.accel import native
    from rlhf_env.sampling import draw_logits

    if native.library() is None:
        pytest.skip("no C compiler to build the kernels")
    logits = torch.randn(3, 10, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="non-finite log-probabilities"):
        draw_logits(logits, torch.tensor([[1.0], [0.0], [1.0]]))  # a temperature of 0 in a per-row temperature
    logits[1, 4] = float("nan")
    with pytest.raises(ValueError, match="non-finite log-probabilities"):
        draw_logits(logits, torch.tensor(1.0))
    with pytest.raises(ValueError, match="float32 CPU logits and one temperature, or one per row"):
        draw_logits(logits, torch.ones(2, 1))


def grouped_batch(tokenizer, group: int):
    """Prompts of different lengths (left-padded), each repeated for ``group`` responses of seeded random
    lengths (right-padded with the pad id), as the env's groups are."""
    from rlhf_env.sampling import encode_prompts

    prompt_ids, prompt_mask = encode_prompts(tokenizer, PROMPTS)
    rows = torch.arange(len(PROMPTS)).repeat_interleave(group)[torch.randperm(len(PROMPTS) * group,
                                                                            generator=torch.Generator().manual_seed(1))]
    g = torch.Generator().manual_seed(0)
    R = 7
    response_mask = (torch.arange(R)[None] < torch.randint(1, R + 1, (len(rows), 1), generator=g)).long()
    response_ids = torch.randint(5, len(tokenizer), (len(rows), R), generator=g)
    response_ids = torch.where(response_mask.bool(), response_ids, tokenizer.pad_token_id)
    return torch.cat([prompt_ids[rows], response_ids], 1), torch.cat([prompt_mask[rows], response_mask], 1), R


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("kind", ["gpt2-trunk", "gpt2", "torch-gpt2", "llama"])
def test_responses_sharing_prompts_get_the_same_log_probs_gradients_and_hidden_states(tiny_model, tokenizer,
                                                                                      tmp_path, kind, chunked,
                                                                                      monkeypatch):
    """Each distinct prompt through the model once, shared by its responses: the full forward's log-probs, hidden
    states and gradients. HF's GPT-2 through the package's trunk and C attention (``gpt2-trunk``: the real tokens
    only, no cache), and through HF's cache (``gpt2``: the C attention not chosen), the envs' torch-only one, and a
    Llama with rotary positions and grouped-query attention through HF's own cache; also with the responses run in
    chunks of similar lengths (``chunked``: a spy checks that they were)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlhf_env import packing, sampling
    from rlhf_env.accel import native, trunk
    from rlhf_env.accel.gpt2 import load_torch_gpt2
    from rlhf_env.models import save_policy
    from rlhf_env.sampling import encode_prompts, response_log_softmax, shared_prompt_forward

    if kind == "gpt2-trunk" and (chunked or native.library() is None):
        pytest.skip("the trunk runs no chunks" if chunked else "no C compiler to build the kernels")
    rests, rest = [], sampling._rest
    monkeypatch.setattr(sampling, "_rest", lambda *args: rests.append(len(args[4])) or rest(*args))  # its rows
    monkeypatch.setattr(sampling, "CHUNK_COST", 0 if chunked else 10 ** 6)
    layouts, shared_plan = [], packing.shared_plan
    monkeypatch.setattr(packing, "shared_plan", lambda *a: layouts.append(shared_plan(*a)) or layouts[-1])
    monkeypatch.setattr(trunk, "c_packed_attention", lambda config: kind == "gpt2-trunk")

    model = tiny_model.train()
    if kind == "torch-gpt2":
        save_policy(tiny_model, tokenizer, tmp_path / "policy")
        model = load_torch_gpt2(tmp_path / "policy").requires_grad_(True)
    elif kind == "llama":
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                             pad_token_id=tokenizer.pad_token_id)).train()
    ids, mask, R = grouped_batch(tokenizer, group=4)
    real = mask[:, -R:].bool()
    hidden = {} if kind == "torch-gpt2" else {"output_hidden_states": True}
    results = []
    for share in (False, True):
        model.zero_grad()
        logp, out = response_log_softmax(model, ids, mask, R, 0.7, share_prompts=share, **hidden)
        (logp.gather(2, ids[:, -R:, None]).squeeze(2) * real).sum().backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters()}
        states = out.hidden_states[-1][:, -R - 1:-1] if hidden else None
        results.append((logp, grads, states))
    (full, full_grads, full_states), (shared, shared_grads, shared_states) = results
    if kind == "gpt2-trunk":  # one layout of the 3 prompts once each and the 12 responses, no cache
        assert rests == [] and len(layouts) == 1 and len(layouts[0].groups) == 4
        assert len(layouts[0].real) == int(mask[:, -R:].sum()) + int(encode_prompts(tokenizer, PROMPTS)[1].sum())
    else:
        assert rests == ([4, 4, 4] if chunked else [12]) and layouts == []  # its responses, in chunks or not
    assert shared_prompt_forward(model, ids, mask, R) is not None
    torch.testing.assert_close(shared[real], full[real], atol=2e-5, rtol=0)
    if hidden:
        torch.testing.assert_close(shared_states[real], full_states[real], atol=2e-5, rtol=0)
    assert max(g.abs().max().item() for g in full_grads.values()) > 1.0  # >> the tolerance
    for name, grad in full_grads.items():
        torch.testing.assert_close(shared_grads[name], grad, atol=1e-4, rtol=1e-4, msg=name)


@pytest.mark.parametrize("trunk", [True, False])
def test_prompts_are_shared_only_where_it_pays(tiny_model, tokenizer, trunk, monkeypatch):
    """Through HF's cache, from ``SHARE_FROM`` rows per prompt; through the package's trunk and its C attention
    (``trunk``), from any prompt that repeats, and not where none does."""
    from rlhf_env.accel import native
    from rlhf_env.accel import trunk as packed_trunk
    from rlhf_env.sampling import SHARE_FROM, shared_prompt_forward

    if trunk and native.library() is None:
        pytest.skip("no C compiler to build the kernels")
    monkeypatch.setattr(packed_trunk, "c_packed_attention", lambda config: trunk)
    ids, mask, R = grouped_batch(tokenizer, group=SHARE_FROM)
    assert shared_prompt_forward(tiny_model, ids, mask, R) is not None
    ids, mask, R = grouped_batch(tokenizer, group=SHARE_FROM - 1)
    assert (shared_prompt_forward(tiny_model, ids, mask, R) is not None) == trunk
    ids, mask, R = grouped_batch(tokenizer, group=1)
    assert shared_prompt_forward(tiny_model, ids, mask, R) is None


@pytest.mark.parametrize("fast", [True, False])
def test_columns_of_padding_in_every_row_are_not_run(tiny_model, tokenizer, fast):
    """Prompts padded 7 columns wider than their longest: the same samples, the prompts returned as given, and
    the decoder never sees the extra columns."""
    from unittest import mock

    from rlhf_env.accel.decoder import GPT2Decoder
    from rlhf_env.sampling import HFDecoder, encode_prompts, sample_from_ids

    ids, mask = encode_prompts(tokenizer, PROMPTS, None, "cpu")
    wide_ids = torch.cat([torch.full((len(ids), 7), tokenizer.pad_token_id), ids], 1)
    wide_mask = torch.cat([torch.zeros(len(ids), 7, dtype=mask.dtype), mask], 1)
    widths, prefill = [], (GPT2Decoder if fast else HFDecoder).prefill

    def spy(self, ids, *args, **kwargs):
        widths.append(ids.shape[1])
        return prefill(self, ids, *args, **kwargs)

    with mock.patch.object(GPT2Decoder if fast else HFDecoder, "prefill", spy):
        narrow = sample_from_ids(tiny_model, tokenizer, ids, mask, 10, 1.0, torch.Generator().manual_seed(5), fast=fast)
        wide = sample_from_ids(tiny_model, tokenizer, wide_ids, wide_mask, 10, 1.0, torch.Generator().manual_seed(5),
                               fast=fast)
    assert widths == [ids.shape[1], ids.shape[1]]
    assert torch.equal(wide.response_ids, narrow.response_ids) and wide.texts == narrow.texts
    torch.testing.assert_close(wide.logprobs, narrow.logprobs, atol=1e-6, rtol=0)
    assert torch.equal(wide.prompt_ids, wide_ids) and torch.equal(wide.prompt_mask, wide_mask)


def test_the_lean_decoder_drops_ended_rows_and_samples_the_same(monkeypatch):
    """The bundled SFT policy ends its responses at different steps: the lean decoder runs fewer rows as they end
    (a spy on its steps), and samples exactly what it samples running every row to the end."""
    from rlhf_env import sampling
    from rlhf_env.accel.decoder import GPT2Decoder
    from rlhf_env.models import load_policy
    from rlhf_env.sampling import encode_prompts, sample_from_ids

    policy, tokenizer = load_policy("sft")
    ids, mask = encode_prompts(tokenizer, PROMPTS * 8, None, "cpu")
    rows, step = [], GPT2Decoder.step

    def spy(self, token, pos):
        rows.append(len(token))
        return step(self, token, pos)

    monkeypatch.setattr(GPT2Decoder, "step", spy)
    runs = {}
    for compact_at in (0.5, 0.0):  # 0: never drops a row
        monkeypatch.setattr(sampling, "COMPACT_AT", compact_at)
        rows.clear()
        runs[compact_at] = sample_from_ids(policy, tokenizer, ids, mask, 24, 1.0, torch.Generator().manual_seed(0),
                                           fast=True), list(rows)
    (dropped, dropped_rows), (kept, kept_rows) = runs[0.5], runs[0.0]
    assert set(kept_rows) == {24} and dropped_rows[0] == 24 and dropped_rows[-1] < 12  # most rows ended early
    assert dropped_rows == sorted(dropped_rows, reverse=True) and len(dropped_rows) == len(kept_rows)
    assert torch.equal(dropped.response_ids, kept.response_ids) and dropped.texts == kept.texts
    torch.testing.assert_close(dropped.logprobs, kept.logprobs, atol=1e-5, rtol=0)
