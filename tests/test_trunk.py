"""GPT-2's packed trunk with its last block at the kept positions only (``rlhf_env.accel.trunk``), against the
model's own forward."""

from unittest import mock

import pytest
import torch

from rlhf_env import packing
from rlhf_env.accel import native, packed_attention, trunk
from rlhf_env.accel.switch import switched_off
from rlhf_env.models import new_model
from rlhf_env.packing import plan


def packed_batch(tokenizer, seed=0):
    """Left-padded prompts and right-padded responses (B, P + R) of seeded random tokens and lengths, and R."""
    generator = torch.Generator().manual_seed(seed)
    B, P, R = 7, 9, 5
    prompt = torch.arange(P)[None] >= P - torch.randint(1, P + 1, (B, 1), generator=generator)
    response = torch.arange(R)[None] < torch.randint(1, R + 1, (B, 1), generator=generator)
    mask = torch.cat([prompt, response], 1).long()
    ids = torch.randint(5, len(tokenizer), (B, P + R), generator=generator) * mask
    return ids, mask, R


@pytest.mark.parametrize("c_kernel", [True, False])
@pytest.mark.parametrize("dims", [dict(n_layer=1), dict(n_layer=3),
                                  dict(n_layer=2, scale_attn_by_inverse_layer_idx=True)])
def test_the_trunk_gives_the_models_own_hidden_states_and_gradients(tokenizer, dims, c_kernel):
    """Either attention: the package's C kernel on the real tokens, or PyTorch's on the packed rows."""
    if c_kernel and native.library() is None:
        pytest.skip("no C compiler to build the kernels")
    torch.manual_seed(0)
    model = new_model(dict(n_embd=32, n_head=2, **{"n_layer": 2, **dims}), tokenizer)  # heads of 16: either way
    assert trunk.applies(model)
    ids, mask, R = packed_batch(tokenizer)
    layout = plan(ids, mask, R)
    assert layout is not None and layout.ids.numel() < ids.numel()  # packed: fewer positions than the rows
    assert len(layout.real) < layout.ids.numel()  # and packed rows that end in padding, which the trunk skips
    weights = torch.randn(*layout.index.shape, 32, generator=torch.Generator().manual_seed(1))

    def run(fn):
        model.zero_grad()
        hidden = fn()
        (hidden * weights).sum().backward()
        return hidden.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    with mock.patch.object(trunk, "c_packed_attention", return_value=c_kernel), \
            mock.patch.object(packed_attention, "attend", wraps=packed_attention.attend) as kernel:
        ours, our_grads = run(lambda: trunk.hidden_at(model, layout))
    assert kernel.call_count == (model.config.n_layer if c_kernel else 0)
    theirs, their_grads = run(lambda: layout.gather(model.base_model(  # (no cache: transformers sees the packing)
        input_ids=layout.ids, position_ids=layout.position_ids, use_cache=False).last_hidden_state))
    torch.testing.assert_close(ours, theirs)
    assert our_grads.keys() == their_grads.keys() and len(our_grads) == len(list(model.base_model.parameters()))
    for name, grad in their_grads.items():  # to float rounding of the largest (a sum over many positions)
        torch.testing.assert_close(our_grads[name], grad, rtol=1e-5, atol=1e-6 * float(grad.abs().max()), msg=name)


@pytest.mark.parametrize("c_kernel", [True, False])
def test_packed_rows_that_reorder_the_rows_and_end_in_no_padding(tokenizer, c_kernel):
    """Rows of 3, 6 and 3 tokens: the longest goes first into a packed row of its own and the other two fill the
    second, so that the packed rows hold every row's tokens in another order, with no padding at all."""
    if c_kernel and native.library() is None:
        pytest.skip("no C compiler to build the kernels")
    torch.manual_seed(0)
    model = new_model(dict(n_embd=32, n_head=2, n_layer=2), tokenizer)
    generator = torch.Generator().manual_seed(2)
    ids = torch.randint(5, len(tokenizer), (3, 8), generator=generator)
    mask = torch.zeros(3, 8, dtype=torch.long)
    mask[0, 3:6] = mask[1, 0:6] = mask[2, 3:6] = 1  # prompts of 3, 3 and 3 (left-padded), responses of 0, 3, 0
    ids, R = ids * mask, 2
    layout = plan(ids, mask, R)
    assert layout is not None and len(layout.real) == layout.ids.numel() == 12
    assert layout.real.tolist() != sorted(layout.real.tolist())  # the rows' tokens, not in the packed rows' order
    with mock.patch.object(trunk, "c_packed_attention", return_value=c_kernel), torch.no_grad():
        ours = trunk.hidden_at(model, layout)
        theirs = layout.gather(model.base_model(input_ids=layout.ids, position_ids=layout.position_ids,
                                                use_cache=False).last_hidden_state)
    torch.testing.assert_close(ours, theirs)


def test_it_stands_in_only_for_an_accelerated_gpt2_without_active_dropout(tokenizer):
    model = new_model(dict(n_embd=16, n_layer=1, n_head=2, resid_pdrop=0.1), tokenizer)
    assert not trunk.applies(model.train())  # dropout active: the model's own forward
    assert trunk.applies(model.eval())
    with switched_off():  # not accelerated
        assert not trunk.applies(new_model(dict(n_embd=16, n_layer=1, n_head=2), tokenizer))


def test_packed_forwards_of_an_accelerated_gpt2_go_through_it(tokenizer):
    model = new_model(dict(n_embd=16, n_layer=2, n_head=2), tokenizer)
    ids, mask, R = packed_batch(tokenizer)
    with mock.patch.object(trunk, "hidden_at", wraps=trunk.hidden_at) as spy:
        hidden = packing.response_hidden(model, ids, mask, R)
    assert spy.call_count == 1 and hidden.shape == (len(ids), R + 1, 16)
    unpacked = packing.response_hidden(model, ids, mask, R, pack=False)  # the padded rows, the model's own forward
    real = torch.cat([mask[:, -R - 1:-R], mask[:, -R:]], 1).bool()  # positions whose outputs a caller reads
    torch.testing.assert_close(hidden[real], unpacked[real])
