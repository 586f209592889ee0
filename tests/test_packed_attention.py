"""The packed training forwards' attention through the package's C kernel (``rlhf_env.accel.packed_attention``)
against PyTorch's attention of each sequence on its own, in float64."""

import pytest
import torch
import torch.nn.functional as F

from rlhf_env.accel import native, packed_attention

needs_kernels = pytest.mark.skipif(native.compiler() is None, reason="no C compiler to build the kernels")


def sequences(lengths, heads, D, seed=0):
    """Projections (T, 3 E) of sequences of these lengths laid end to end (float64, seeded, some large so that
    the softmax is peaked), their offsets (S + 1), and a gradient of the output (T, E)."""
    generator = torch.Generator().manual_seed(seed)
    T, E = sum(lengths), heads * D
    qkv = torch.randn(T, 3 * E, generator=generator, dtype=torch.float64) * 2
    starts = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    return qkv, starts, torch.randn(T, E, generator=generator, dtype=torch.float64)


def reference(qkv, starts, heads, scale):
    """Each sequence's causal attention on its own, by PyTorch, heads merged (T, E)."""
    E = qkv.shape[1] // 3
    outs = []
    for first, end in zip(starts[:-1].tolist(), starts[1:].tolist()):
        q, k, v = (t.view(end - first, heads, -1).transpose(0, 1) for t in qkv[first:end].split(E, 1))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
        outs.append(out.transpose(0, 1).reshape(end - first, E))
    return torch.cat(outs)


@needs_kernels
@pytest.mark.parametrize("heads, D, lengths", [(2, 16, [5, 1, 17, 33, 2]), (3, 32, [40, 16, 1, 9])])
def test_the_kernel_gives_each_sequences_own_attention_and_gradients(heads, D, lengths):
    """Sequences of 1 token, of a multiple of the kernel's 16-column blocks and of neither; float32 against a float64
    reference, to float32 rounding."""
    qkv, starts, grad = sequences(lengths, heads, D)
    expected_in = qkv.clone().requires_grad_(True)
    expected = reference(expected_in, starts, heads, D**-0.5)
    (expected * grad).sum().backward()
    expected = expected.detach()
    ours_in = qkv.float().requires_grad_(True)
    ours = packed_attention.attend(ours_in, starts, heads, D**-0.5)
    (ours * grad.float()).sum().backward()
    assert ours.shape == (sum(lengths), heads * D) and ours.dtype == torch.float32
    torch.testing.assert_close(ours.double(), expected, rtol=0, atol=2e-6 * float(expected.abs().max()))
    assert float(expected_in.grad.abs().max()) > 1.0  # >> the tolerance
    torch.testing.assert_close(ours_in.grad.double(), expected_in.grad, rtol=0,
                               atol=1e-5 * float(expected_in.grad.abs().max()))
    with torch.no_grad():  # without autograd: the same output
        assert torch.equal(packed_attention.attend(qkv.float(), starts, heads, D**-0.5), ours.detach())


def grouped_reference(qkv, starts, groups, heads, scale):
    """Each group's first segment on its own, and each later one after it as one sequence (its part of the output),
    by PyTorch, in the tokens' order."""
    pieces = []
    for g in range(len(groups) - 1):
        first = int(groups[g])
        prompt = qkv[int(starts[first]):int(starts[first + 1])]
        pieces.append(reference(prompt, torch.tensor([0, len(prompt)]), heads, scale))
        for s in range(first + 1, int(groups[g + 1])):
            rows = torch.cat([prompt, qkv[int(starts[s]):int(starts[s + 1])]])
            pieces.append(reference(rows, torch.tensor([0, len(rows)]), heads, scale)[len(prompt):])
    return torch.cat(pieces)


@needs_kernels
@pytest.mark.parametrize("threads", [1, 3])
def test_responses_that_share_a_prompt_attend_to_it_and_to_themselves(threads, monkeypatch):
    """Groups of a prompt and 3 responses (one of a single token), of a prompt of one token and 1 response, of a
    sequence alone, and of a prompt of 20 and responses of none and 17 tokens (keys over several blocks of 16): each
    response attends to its prompt and its own tokens, and the prompt's gradients sum its responses' (on several
    threads too)."""
    lengths = [7, 4, 1, 9, 1, 5, 12, 20, 0, 17]  # (prompt 7: 4, 1, 9), (prompt 1: 5), (12 alone), (prompt 20: 0, 17)
    qkv, starts, grad = sequences(lengths, 2, 16, seed=3)
    groups = torch.tensor([0, 4, 6, 7, 10])
    expected_in = qkv.clone().requires_grad_(True)
    expected = grouped_reference(expected_in, starts, groups, 2, 0.25)
    (expected * grad).sum().backward()
    expected = expected.detach()
    monkeypatch.setattr(native, "PARALLEL_FROM", 0)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ours_in = qkv.float().requires_grad_(True)
        ours = packed_attention.attend(ours_in, starts, 2, 0.25, groups)
        (ours * grad.float()).sum().backward()
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(ours.double(), expected, rtol=0, atol=2e-6 * float(expected.abs().max()))
    assert float(expected_in.grad[:7].abs().max()) > 1.0  # the prompt's, from its 3 responses
    torch.testing.assert_close(ours_in.grad.double(), expected_in.grad, rtol=0,
                               atol=1e-5 * float(expected_in.grad.abs().max()))
    alone = packed_attention.attend(qkv.float(), starts, 2, 0.25)  # without groups: every segment on its own
    assert not torch.allclose(alone[7:20], ours[7:20].detach(), atol=1e-3)


@needs_kernels
def test_queries_at_some_tokens_only_give_their_outputs_and_the_same_gradients():
    """The last layer of a forward read at some positions: the marked tokens' outputs as in the full attention,
    0 elsewhere, and the gradients of a loss on the marked outputs as the full attention's (in groups too)."""
    qkv, starts, grad = sequences([7, 4, 9, 5], 2, 16, seed=4)
    qkv, groups = qkv.float(), torch.tensor([0, 3, 4])  # a prompt and 2 responses; a sequence alone
    queries = torch.zeros(len(qkv), dtype=torch.bool)
    queries[[6, 7, 10, 11, 12, 19, 24]] = True
    weights = grad.float() * queries[:, None]  # a loss that reads the marked outputs only
    results = []
    for marked in (None, queries):
        x = qkv.clone().requires_grad_(True)
        out = packed_attention.attend(x, starts, 2, 0.25, groups, marked)
        (out * weights).sum().backward()
        results.append((out.detach(), x.grad))
    (full, full_grad), (some, some_grad) = results
    assert torch.equal(some[queries], full[queries]) and not some[~queries].any()
    assert float(full_grad.abs().max()) > 0.1
    torch.testing.assert_close(some_grad, full_grad, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match=r"queries must be a bool mask of the 25 tokens on the CPU, got torch.int64 "
                                         r"\(25,\) on cpu"):
        packed_attention.attend(qkv, starts, 2, 0.25, groups, queries.long())


@needs_kernels
def test_a_sequence_attends_to_nothing_outside_itself_or_after_a_token():
    """NaN in one sequence's projections, and in another's last token: the first sequence is untouched, and the
    other's earlier tokens too (their outputs and gradients)."""
    qkv, starts, grad = sequences([6, 7, 5], 2, 16)
    qkv = qkv.float()
    qkv[6:13] = float("nan")  # the second sequence
    qkv[17] = float("nan")  # the third's last token
    x = qkv.requires_grad_(True)
    out = packed_attention.attend(x, starts, 2, 0.25)
    (out * grad.float()).sum().backward()
    finite = torch.cat([torch.arange(0, 6), torch.arange(13, 17)])
    assert torch.isfinite(out[finite]).all() and torch.isnan(out[6:13]).all()
    assert torch.isfinite(x.grad[:6]).all()
    alone = packed_attention.attend(qkv.detach()[13:17], torch.tensor([0, 4]), 2, 0.25)
    torch.testing.assert_close(out[13:17], alone, rtol=0, atol=0)


@needs_kernels
def test_on_several_threads_it_gives_what_one_thread_does(monkeypatch):
    """More (sequence, head) tasks than threads: each is computed alone, so the results are the same bit for bit."""
    qkv, starts, grad = sequences([9, 30, 3, 17, 21], 3, 16, seed=2)
    qkv, grad = qkv.float(), grad.float()

    def run():
        x = qkv.clone().requires_grad_(True)
        out = packed_attention.attend(x, starts, 3, 0.25)
        (out * grad).sum().backward()
        return out.detach(), x.grad

    one = run()
    monkeypatch.setattr(native, "PARALLEL_FROM", 0)  # every call parallel
    threads = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        assert native.threads(1) == 4
        for a, b in zip(run(), one):
            assert torch.equal(a, b)
    finally:
        torch.set_num_threads(threads)


@needs_kernels
def test_it_refuses_offsets_that_do_not_cover_the_tokens_and_what_it_cannot_read():
    qkv, starts, _ = sequences([4, 3], 2, 16)
    with pytest.raises(ValueError, match=r"groups must run from 0 to the 2 segments, each of one or more, got "
                                         r"\[0, 0, 2\]"):
        packed_attention.attend(qkv.float(), starts, 2, 0.25, torch.tensor([0, 0, 2]))
    with pytest.raises(ValueError, match=r"starts must run from 0 to the tokens, none decreasing, got \[0, 5, 4, 7\]"):
        packed_attention.attend(qkv.float(), torch.tensor([0, 5, 4, 7]), 2, 0.25)
    with pytest.raises(ValueError, match=r"float32 CPU projections \(T, 3 E\).*got torch.bfloat16 \(7, 96\)"):
        packed_attention.attend(qkv.bfloat16(), starts, 2, 0.25)  # (a projection under autocast)
    with pytest.raises(ValueError, match=r"got torch.float32 \(7, 96\)"):
        packed_attention.attend(qkv.float(), starts, 4, 0.25)  # heads of 8
    with pytest.raises(ValueError, match=r"starts must run from 0 to the 7 tokens, got \[0, 4, 6\]"):
        packed_attention.attend(qkv.float(), torch.tensor([0, 4, 6]), 2, 0.25)


def test_it_applies_to_float32_cpu_tensors_with_heads_of_a_multiple_of_16():
    x = torch.zeros(3, 96)
    built = native.library() is not None
    assert packed_attention.applies(x, 16) == built and packed_attention.applies(x, 32) == built
    assert not packed_attention.applies(x, 8) and not packed_attention.applies(x, 20)
    assert not packed_attention.applies(x.double(), 16) and not packed_attention.applies(x.bfloat16(), 16)
