"""Sampling without replacement: Gumbel-top-k against enumeration, exact SWOR pass@k."""

import itertools
import math

import pytest
import torch

from companion import exact, passk, sampling


def sequential_law(probs):
    """All ordered k-tuples of distinct answers with their successive-draw probabilities."""
    m = len(probs)

    def law(k):
        out = {}
        for tup in itertools.permutations(range(m), k):
            pr, used = 1.0, 0.0
            for a in tup:
                pr *= probs[a] / (1 - used)
                used += probs[a]
            out[tup] = pr
        return out

    return law


def test_swor_matches_enumeration_and_the_notes_example():
    probs = torch.tensor([[0.2, 0.4, 0.2, 0.1, 0.1]], dtype=torch.float64)
    correct = torch.tensor([[True, False, False, False, False]])
    law = sequential_law(probs[0].tolist())
    for k in range(1, 6):
        brute = sum(p for tup, p in law(k).items() if any(correct[0, a] for a in tup))
        got = exact.pass_at_k_swor(probs.log(), correct, k)
        assert float(got) == pytest.approx(brute, abs=1e-12)
    got = [float(exact.pass_at_k_swor(probs.log(), correct, k)) for k in (2, 3, 4)]
    assert got == pytest.approx([0.428, 0.666, 0.873], abs=5e-4)


def test_swor_at_least_iid_and_equal_at_k1():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(40, 7, generator=g, dtype=torch.float64)
    correct = torch.zeros(40, 7, dtype=torch.bool)
    correct[:, :2] = True
    for k in range(1, 7):
        swor = exact.pass_at_k_swor(logits, correct, k)
        iid = exact.pass_at_k(logits, correct, k)
        assert torch.all(swor >= iid - 1e-12)
        if k == 1:
            torch.testing.assert_close(swor, iid)
    assert torch.all(exact.pass_at_k_swor(logits, correct, 6) == 1)  # only 5 wrong answers


def test_swor_depends_on_how_the_wrong_mass_is_spread():
    concentrated = torch.tensor([[0.2, 0.8, 1e-12, 1e-12, 1e-12]], dtype=torch.float64)
    spread = torch.tensor([[0.2, 0.2, 0.2, 0.2, 0.2]], dtype=torch.float64)
    correct = torch.tensor([[True, False, False, False, False]])
    a = float(exact.pass_at_k_swor(concentrated.log(), correct, 2))
    b = float(exact.pass_at_k_swor(spread.log(), correct, 2))
    assert a == pytest.approx(1.0, abs=1e-9) and b == pytest.approx(0.4, abs=1e-12)
    assert passk.pass_at_k(0.2, 2) == pytest.approx(0.36)  # i.i.d. sees only J_1


def test_gumbel_top_k_inclusion_frequencies():
    """Empirical frequencies of ordered pairs and of inclusion against the exact law."""
    probs = [0.5, 0.25, 0.15, 0.1]
    logits = torch.tensor(probs, dtype=torch.float64).log().expand(200_000, 4)
    draws = sampling.gumbel_top_k(logits, 2, torch.Generator().manual_seed(0))
    assert torch.all(draws[:, 0] != draws[:, 1])
    law = sequential_law(probs)(2)
    counts = torch.bincount(draws[:, 0] * 4 + draws[:, 1], minlength=16).double() / len(draws)
    for (a, b), p in law.items():
        se = math.sqrt(p * (1 - p) / len(draws))
        assert abs(float(counts[a * 4 + b]) - p) < 5 * se
    incl = torch.zeros(4, dtype=torch.float64)
    for (a, b), p in law.items():
        incl[a] += p
        incl[b] += p
    freq = torch.bincount(draws.flatten(), minlength=4).double() / len(draws)
    assert torch.all((freq - incl).abs() < 5 * torch.sqrt(incl * (1 - incl) / len(draws)))


def test_swor_bad_input():
    with pytest.raises(ValueError, match="same number of wrong"):
        exact.pass_at_k_swor(torch.zeros(2, 3), torch.tensor([[1, 0, 0], [1, 1, 0]]).bool(), 1)
    with pytest.raises(ValueError, match="k must be <= n"):
        sampling.gumbel_top_k(torch.zeros(2, 3), 4)
