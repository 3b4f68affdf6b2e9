import pytest
import torch

from passk_companion.theory import contextual, exact


def test_closed_form_gradients_match_autograd():
    pol = contextual.easy_hard_policy(10, 4, 5, spread=2.0, seed=1)
    for k in (1, 4):
        g1, gk = contextual.per_prompt_gradients(pol, k)
        w = pol.weight.clone().requires_grad_(True)
        (auto,) = torch.autograd.grad(exact.pass_at_k(pol.logits(w), pol.correct, k).sum(), w)
        torch.testing.assert_close(gk.sum(0), auto)
        (auto1,) = torch.autograd.grad(exact.success_prob(pol.logits(w), pol.correct).sum(), w)
        torch.testing.assert_close(g1.sum(0), auto1)


def test_per_prompt_collinear_batch_not():
    pol = contextual.easy_hard_policy(32, 6, 5, spread=4.0, seed=0)
    for k in (8, 64):  # at k = 64 the gradients are ~1e-100: the cosine must still be 1
        cos = contextual.per_prompt_cosine(pol, k)
        assert torch.all(cos[~torch.isnan(cos)] > 1 - 1e-12)
        assert torch.isnan(cos).sum() < len(cos) // 2
    assert contextual.batch_cosine(pol, 1) == pytest.approx(1.0, abs=1e-12)
    assert contextual.batch_cosine(pol, 8) < 0.99


def test_bad_arguments():
    with pytest.raises(ValueError, match="spread"):
        contextual.easy_hard_policy(4, 2, 3, spread=-1)
    with pytest.raises(ValueError, match="n_prompts"):
        contextual.easy_hard_policy(1, 2, 3, spread=1)
