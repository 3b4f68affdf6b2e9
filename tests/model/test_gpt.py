"""Tiny GPT: KV cache, attention, samplers (i.i.d. and stochastic beam search without
replacement), and the shared-work scoring of sequences, each against a plain reference."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from passk_companion.model.generate import (
    answer_mask,
    distinct_rows,
    prefix_forest,
    sample_iid,
    sample_swor,
    sequence_logprob,
)
from passk_companion.model.gpt import GPT, GPTConfig, causal_attention, pick_device
from passk_companion.model.portable import NATIVE


def tiny(vocab=5, block=8, scale=8.0, seed=0):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=vocab, block_size=block, n_layer=2, n_head=2, n_embd=16))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)
    return model


def test_cached_and_uncached_logits_are_identical():
    model = tiny(vocab=11, block=12, scale=1.0)
    seq = torch.randint(0, 11, (3, 12), generator=torch.Generator().manual_seed(0))
    full = model(seq)
    cache = model.new_cache(3)
    parts = [model(seq[:, :4], cache)] + [model(seq[:, i : i + 1], cache) for i in range(4, 12)]
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=1e-5, atol=1e-5)


def test_iid_sampling_same_with_and_without_cache():
    model = tiny()
    prompts = torch.zeros(50, 2, dtype=torch.long)
    a1, l1 = sample_iid(model, prompts, 3, 3, 3, 4, generator=torch.Generator().manual_seed(1))
    a2, l2 = sample_iid(
        model, prompts, 3, 3, 3, 4, generator=torch.Generator().manual_seed(1), use_cache=False
    )
    assert torch.equal(a1, a2)
    torch.testing.assert_close(l1, l2, rtol=1e-5, atol=1e-5)
    lp, _ = sequence_logprob(model, prompts.repeat_interleave(3, 0), a1.view(150, 3), eos=3)
    torch.testing.assert_close(lp.double(), l1.view(-1), rtol=1e-4, atol=1e-4)


def exact_sequence_law(model, eos, pad, length=2):
    """Probabilities of every answer of `length` tokens after the prompt [0, 1]."""
    law = {}
    with torch.no_grad():
        for seq in itertools.product(range(model.cfg.vocab_size), repeat=length):
            if seq[0] == eos and seq[1] != pad:  # after EOS the samplers emit only PAD
                continue
            ans = torch.tensor([seq])
            lp, _ = sequence_logprob(model, torch.tensor([[0, 1]]), ans, eos)
            law[seq] = float(lp.exp())
    return law


def test_swor_matches_successive_draws_without_replacement():
    model, eos, pad, draws = tiny(), 3, 4, 60_000
    law = exact_sequence_law(model, eos, pad)
    assert sum(law.values()) == pytest.approx(1.0, abs=1e-5)
    out, phi = sample_swor(
        model,
        torch.tensor([[0, 1]]).expand(draws, 2),
        2,
        2,
        eos,
        pad,
        generator=torch.Generator().manual_seed(2),
    )
    rows = out.tolist()
    assert all(tuple(r[0]) != tuple(r[1]) for r in rows)
    for pos in (0, 1):
        counts = {}
        for r in rows:
            counts[tuple(r[pos])] = counts.get(tuple(r[pos]), 0) + 1
        for seq, p in law.items():
            want = p if pos == 0 else sum(q * p / (1 - q) for s, q in law.items() if s != seq)
            if want * draws < 20:  # too rare for a normal approximation
                continue
            z = (counts.get(seq, 0) / draws - want) / math.sqrt(want * (1 - want) / draws)
            assert abs(z) < 5, (pos, seq, want, z)
    lp, _ = sequence_logprob(model, torch.tensor([[0, 1]]).expand(10, 2), out[:10, 0], eos)
    torch.testing.assert_close(lp.double(), phi[:10, 0], rtol=1e-4, atol=1e-4)


def test_answer_mask_stops_after_eos():
    ans = torch.tensor([[1, 2, 3, 4, 4], [3, 4, 4, 4, 4], [1, 1, 1, 1, 1]])
    assert answer_mask(ans, 3).tolist() == [
        [True, True, True, False, False],
        [True, False, False, False, False],
        [True] * 5,
    ]


def test_errors_and_device():
    model = tiny()
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="temperature"):
        sample_iid(model, torch.zeros(1, 2, dtype=torch.long), 2, 2, 3, 4, temperature=0)
    with pytest.raises(ValueError, match="n <= vocab_size"):
        sample_swor(model, torch.zeros(1, 2, dtype=torch.long), 6, 2, 3, 4)
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(vocab_size=5, block_size=4, n_head=3, n_embd=16)
    assert pick_device("cpu").type == "cpu"
    assert pick_device().type in ("cpu", "cuda")


def test_portable_numerics_default_to_the_cpu_even_with_a_gpu(monkeypatch):
    # the stored outputs are CPU bits: on a machine with a GPU, the portable profiles must not
    # move to it unless asked
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device(None, "portable").type == "cpu"
    assert pick_device(None, "float32").type == "cuda"
    assert pick_device("cuda:1", "portable") == torch.device("cuda:1")


def reference_logprob(model, prompts, answers, eos, temperature=1.0):
    """The plain definition: one forward of every concatenated sequence, nothing shared."""
    seq = torch.cat([prompts, answers], 1)
    logits = model(seq[:, :-1])[:, prompts.shape[1] - 1 :].float() / temperature
    logp = F.log_softmax(logits, -1)
    tok = logp.gather(-1, answers[..., None])[..., 0]
    mask = answer_mask(answers, eos).to(logp.dtype)
    ent = -(logp.exp() * logp).sum(-1)
    return (tok * mask).sum(-1), (ent * mask).sum(-1) / mask.sum(-1)


def scoring_batch(seed, vocab=9, eos=7, pad=8, rows=40, length=6):
    """Rows with repeated prompts (adjacent and not), exact duplicate rows, EOS at every position
    or never, and junk after EOS, as the samplers and callers produce."""
    g = torch.Generator().manual_seed(seed)
    prompts = torch.randint(0, 3, (rows, 2), generator=g)  # 9 distinct prompts at most
    answers = torch.randint(0, eos, (rows, length), generator=g)
    stop = torch.randint(0, length + 2, (rows,), generator=g)  # >= length: no EOS
    pos = torch.arange(length)
    answers = torch.where(pos == stop[:, None], eos, answers)
    answers = torch.where(pos > stop[:, None], pad, answers)
    answers[rows // 2 :: 3] = answers[: len(answers[rows // 2 :: 3])]  # duplicate answers...
    prompts[rows // 2 :: 3] = prompts[: len(prompts[rows // 2 :: 3])]  # ...of duplicate rows
    return prompts, answers


@pytest.mark.parametrize("seed,temperature", [(0, 1.0), (1, 0.7), (2, 1.3)])
def test_sequence_logprob_equals_the_plain_forward_values_and_gradients(seed, temperature):
    prompts, answers = scoring_batch(seed)
    assert len(torch.unique(torch.cat([prompts, answers], 1), dim=0)) < len(prompts)
    model = tiny(vocab=9, block=8, scale=3.0, seed=seed)
    w = torch.randn(len(prompts), generator=torch.Generator().manual_seed(seed))
    grads = []
    for fn in (sequence_logprob, reference_logprob):
        model.zero_grad()
        lp, ent = fn(model, prompts, answers, 7, temperature)
        ((w * lp).sum() + (w.flip(0) * ent).sum()).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
        if fn is sequence_logprob:
            got = (lp.detach(), ent.detach())
    lp_ref, ent_ref = reference_logprob(model, prompts, answers, 7, temperature)
    torch.testing.assert_close(got[0], lp_ref.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1], ent_ref.detach(), rtol=1e-5, atol=1e-5)
    for g_new, g_ref in zip(*grads, strict=True):  # float32, and gradients summed in other orders
        torch.testing.assert_close(g_new, g_ref, rtol=1e-4, atol=1e-4 * float(g_ref.abs().max()))


def test_the_prefix_forest_has_one_node_per_distinct_prefix_of_each_run():
    g = torch.Generator().manual_seed(0)
    seqs = torch.randint(0, 3, (30, 5), generator=g)
    lengths = torch.randint(1, 6, (30,), generator=g)
    run = torch.arange(3).repeat_interleave(10)
    forest, path = prefix_forest(seqs, lengths, run, 3, 4)
    prefixes = {(int(run[i]), tuple(seqs[i, : t + 1].tolist())) for i in range(30)
                for t in range(int(lengths[i]))}  # fmt: skip
    assert len(forest.token) == len(prefixes)
    assert forest.runs.run.tolist() == sorted(forest.runs.run.tolist())  # grouped by run
    for i in range(30):
        for t in range(5):
            node = int(path[i, t])
            if t >= lengths[i]:
                assert node == -1
                continue
            assert int(forest.runs.run[node]) == int(run[i]) and int(forest.depth[node]) == t
            chain = forest.ancestors[node, : t + 1]
            assert forest.token[chain].tolist() == seqs[i, : t + 1].tolist()
    assert [len(level) for level in forest.levels] == [
        len({p for p in prefixes if len(p[1]) == t + 1}) for t in range(5)
    ]


def test_sequence_logprob_of_one_token_answers_and_bad_tokens():
    model = tiny(vocab=9, block=8, seed=3)
    prompts = torch.tensor([[0, 1], [2, 1], [0, 1]])
    answers = torch.tensor([[7], [3], [7]])
    lp, ent = sequence_logprob(model, prompts, answers, 7)
    ref_lp, ref_ent = reference_logprob(model, prompts, answers, 7)
    torch.testing.assert_close(lp, ref_lp)
    torch.testing.assert_close(ent, ref_ent)
    with pytest.raises(ValueError, match=r"answer token ids must lie in \[0, 9\)"):
        sequence_logprob(model, prompts, torch.tensor([[7], [9], [7]]), 7)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 40),
    st.integers(1, 25),
    st.sampled_from([2, 3, 7, 43, 1000, 2**20]),
    st.integers(0, 10**6),
)
def test_distinct_rows_is_torch_unique(rows, width, base, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, min(base, 4), (rows, width), generator=g)  # few values: many repeats
    x[::2] = torch.randint(0, base, (len(x[::2]), width), generator=g)
    got, inverse = distinct_rows(x, base)
    want, want_inverse = torch.unique(x, dim=0, return_inverse=True)
    assert torch.equal(got, want) and torch.equal(inverse, want_inverse)
    assert torch.equal(got[inverse], x)


def test_distinct_rows_refuses_out_of_range_ids():
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        distinct_rows(torch.tensor([[0, 5]]), 5)
    with pytest.raises(ValueError, match="token ids"):
        distinct_rows(torch.tensor([[-1, 0]]), 5)


@pytest.mark.parametrize("t,start", [(1, 0), (1, 6), (4, 0), (3, 5)])
def test_causal_attention_is_masked_softmax_attention(t, start):
    g = torch.Generator().manual_seed(t + start)
    q = torch.randn(3, t, 2, 8, generator=g)
    kv = torch.randn(3, start + t, 2, 2, 8, generator=g)
    mask = torch.ones(t, start + t, dtype=torch.bool).tril(start)  # query i sees keys <= start + i
    k, v = (kv[:, :, i].transpose(1, 2) for i in (0, 1))
    want = F.scaled_dot_product_attention(q.transpose(1, 2), k, v, attn_mask=mask)
    got = causal_attention(q, kv, start)
    torch.testing.assert_close(got, want.transpose(1, 2), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("seed,n,temperature", [(0, 6, 1.0), (1, 16, 1.0), (2, 9, 0.6)])
def test_iid_sampling_with_shared_prefixes_equals_recomputation(seed, n, temperature):
    """The cached sampler (shared prefixes, finished rows dropped) draws exactly the answers of
    the plain one that recomputes every row, on a model peaked enough for shared prefixes."""
    model = tiny(vocab=8, block=12, scale=4.0, seed=seed)
    prompts = torch.randint(0, 6, (5, 3), generator=torch.Generator().manual_seed(seed))
    prompts[3] = prompts[0]  # a repeated prompt
    runs = [
        sample_iid(
            model, prompts, n, 9, 6, 7, temperature, torch.Generator().manual_seed(9), use_cache
        )
        for use_cache in (True, False)
    ]
    (a1, l1), (a2, l2) = runs
    assert torch.equal(a1, a2)
    assert not (a1.is_inference() or l1.is_inference())  # ordinary tensors for the caller
    torch.testing.assert_close(l1, l2, rtol=1e-5, atol=1e-5)  # float32 logits, other order
    lengths = answer_mask(a1, 6).sum(-1)
    rows = a1.view(-1, 9)[:, :2].tolist()
    assert lengths.min() < lengths.max()  # rows finish at different steps
    assert len(set(map(tuple, rows))) < len(rows)  # some rollouts share a prefix


def test_iid_sampling_matches_the_exact_sequence_law():
    model, eos, pad, draws = tiny(), 3, 4, 40_000
    law = exact_sequence_law(model, eos, pad)
    out, logp = sample_iid(
        model,
        torch.tensor([[0, 1]]),
        draws,
        2,
        eos,
        pad,
        generator=torch.Generator().manual_seed(5),
    )
    counts = {}
    for r in out[0].tolist():
        counts[tuple(r)] = counts.get(tuple(r), 0) + 1
    assert set(counts) <= set(law)
    for seq, p in law.items():
        if p * draws < 20:
            continue
        z = (counts.get(seq, 0) / draws - p) / math.sqrt(p * (1 - p) / draws)
        assert abs(z) < 5, (seq, p, z)
    lp = torch.tensor([math.log(law[tuple(r)]) for r in out[0, :50].tolist()], dtype=torch.float64)
    torch.testing.assert_close(logp[0, :50], lp, rtol=1e-4, atol=1e-4)


def test_iid_sampling_never_draws_an_impossible_token():
    class Masked(torch.nn.Module):
        """Only tokens 1 and 3 (EOS) have probability > 0, whatever the prefix."""

        ops = NATIVE

        def __init__(self):
            super().__init__()
            self.cfg = GPTConfig(vocab_size=6, block_size=8)

        runs = 1

        def new_cache(self, batch, run=None):
            return None

        def forward(self, idx, cache=None, run=None):
            logits = torch.full((*idx.shape, 6), float("-inf"))
            logits[..., 1], logits[..., 3] = 0.0, -2.0
            return logits

    out, logp = sample_iid(Masked(), torch.zeros(4, 2, dtype=torch.long), 500, 5, 3, 5)
    counted = out[answer_mask(out, 3)]
    assert set(counted.unique().tolist()) == {1, 3}
    assert torch.isfinite(logp).all()
