"""AdamW or plain SGD for every run of an ensemble, each run with its own settings.

The parameters carry a leading run axis (R, ...); run r follows its own optimizer ("adamw" or
"sgd"), learning rate and weight decay, and keeps its own step count and moments:

    AdamW (Loshchilov & Hutter 2019, the update of torch.optim.AdamW):
        p <- p (1 - lr wd);  m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;
        p <- p - (lr / (1 - b1^t)) m / (sqrt(v) / sqrt(1 - b2^t) + eps)
    SGD (no momentum):  p <- p - lr g

Each is written as separate multiplications, additions, divisions and square roots, each
correctly rounded in IEEE arithmetic, hence the same bits on every CPU (torch's fused ``addcdiv``
rounds differently with and without FMA), and the same bits for a run alone or in any ensemble
(every operation is elementwise). b1^t and b2^t are kept as repeated products of Python floats.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from passk_companion.validation import is_integer

__all__ = ["KINDS", "RunOptimizer"]

KINDS = ("adamw", "sgd")


def _along(t: Tensor, like: Tensor) -> Tensor:
    """t (R,) viewed to broadcast over a parameter (R, ...)."""
    return t.view(len(t), *([1] * (like.dim() - 1)))


class RunOptimizer:
    """The optimizer of each run of `params` (tensors (R, ...), in a fixed order): kinds[r],
    lrs[r] and weight_decay[r] (module docstring)."""

    def __init__(
        self,
        params: Sequence[Tensor],
        kinds: Sequence[str],
        lrs: Sequence[float],
        weight_decay: Sequence[float] | float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        self.params = list(params)
        runs = len(kinds)
        decay = [weight_decay] * runs if isinstance(weight_decay, (int, float)) else weight_decay
        if any(p.shape[0] != runs for p in self.params):
            raise ValueError(f"parameters of another number of runs than the {runs} settings")
        if len(lrs) != runs or len(decay) != runs:
            raise ValueError(f"{runs} runs need {runs} learning rates and weight decays")
        for kind, lr, wd in zip(kinds, lrs, decay, strict=True):
            if kind not in KINDS:
                raise ValueError(f"optimizer must be one of {KINDS}, got {kind!r}")
            if not (lr > 0 and wd >= 0 and math.isfinite(lr) and math.isfinite(wd)):
                raise ValueError(f"an optimizer needs lr > 0 and weight_decay >= 0, got {lr}, {wd}")
        if not (eps > 0 and all(0 <= b < 1 for b in betas)):
            raise ValueError("AdamW needs eps > 0 and betas in [0, 1)")
        self.kinds, self.lrs, self.decay = list(kinds), list(lrs), list(decay)
        self.betas, self.eps = betas, eps
        self.steps = [0] * runs
        self.b1t, self.b2t = [1.0] * runs, [1.0] * runs
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]

    @property
    def runs(self) -> int:
        return len(self.kinds)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """One update of every run (module docstring)."""
        b1, b2 = self.betas
        self.steps = [s + 1 for s in self.steps]
        self.b1t = [x * b1 for x in self.b1t]
        self.b2t = [x * b2 for x in self.b2t]
        adam = [k == "adamw" for k in self.kinds]
        first = self.params[0]

        def per_run(values: list[float]) -> Tensor:
            return torch.tensor(values, dtype=first.dtype, device=first.device)

        lr = per_run(self.lrs)
        if any(adam):
            settings = zip(self.lrs, self.decay, adam, strict=True)
            decay = per_run([1.0 - lr_ * wd if is_a else 1.0 for lr_, wd, is_a in settings])
            root = per_run([math.sqrt(1.0 - x) for x in self.b2t])
            scale = per_run([lr_ / (1.0 - x) for lr_, x in zip(self.lrs, self.b1t, strict=True)])
            is_adam = torch.tensor(adam, device=first.device)
        for i, p in enumerate(self.params):
            g = p.grad
            if g is None:
                continue
            sgd_step = g * _along(lr, p)
            if not any(adam):
                p.sub_(sgd_step)
                continue
            if any(self.decay):
                p.mul_(_along(decay, p))
            m, v = self.exp_avg[i], self.exp_avg_sq[i]
            m.mul_(b1).add_(g * (1.0 - b1))
            v.mul_(b2).add_((g * g) * (1.0 - b2))
            denom = v.sqrt() / _along(root, p) + self.eps
            adam_step = (m / denom) * _along(scale, p)
            if all(adam):
                p.sub_(adam_step)
            else:
                p.sub_(torch.where(_along(is_adam, p), adam_step, sgd_step))

    def state_of(self, r: int) -> dict:
        """Run r's state as plain data (its kind, step count, powers of the betas and moments)."""
        return {
            "kind": self.kinds[r],
            "step": self.steps[r],
            "b1t": self.b1t[r],
            "b2t": self.b2t[r],
            "exp_avg": [m[r].detach().cpu().clone() for m in self.exp_avg],
            "exp_avg_sq": [v[r].detach().cpu().clone() for v in self.exp_avg_sq],
        }

    def load_run(self, r: int, state: dict) -> None:
        """Set run r's state from :meth:`state_of`'s data; ValueError naming what does not fit
        (another kind, count or shape of moments, or values that are not finite)."""
        if not isinstance(state, dict) or state.get("kind") != self.kinds[r]:
            kind = state.get("kind") if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"optimizer state of {kind!r}, the run uses {self.kinds[r]!r}")
        step, b1t, b2t = state.get("step"), state.get("b1t"), state.get("b2t")
        if not is_integer(step) or step < 0:
            raise ValueError(f"optimizer step {step!r} is not a count")
        for name, x in (("b1t", b1t), ("b2t", b2t)):
            if isinstance(x, bool) or not isinstance(x, float) or not 0.0 <= x <= 1.0:
                raise ValueError(f"optimizer {name} {x!r} is not a power of a beta")
        for name, ours in (("exp_avg", self.exp_avg), ("exp_avg_sq", self.exp_avg_sq)):
            theirs = state.get(name)
            if not isinstance(theirs, list) or len(theirs) != len(ours):
                raise ValueError(f"optimizer {name} holds no list of {len(ours)} tensors")
            for mine, t in zip(ours, theirs, strict=True):
                if not isinstance(t, Tensor) or t.shape != mine.shape[1:]:
                    shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
                    raise ValueError(
                        f"optimizer {name} tensor of shape {shape}, its parameter's is "
                        f"{tuple(mine.shape[1:])}"
                    )
                if not (t.is_floating_point() and torch.isfinite(t).all()):
                    raise ValueError(f"optimizer {name} holds values that are not finite floats")
        with torch.no_grad():
            for mine, t in zip(self.exp_avg, state["exp_avg"], strict=True):
                mine[r].copy_(t)
            for mine, t in zip(self.exp_avg_sq, state["exp_avg_sq"], strict=True):
                mine[r].copy_(t)
        self.steps[r], self.b1t[r], self.b2t[r] = step, b1t, b2t

    def select(self, params: Sequence[Tensor], index: Sequence[int]) -> RunOptimizer:
        """The optimizer of runs `index` of this one (in that order), over `params`: the
        parameters of the ensemble those runs now form."""
        out = RunOptimizer.__new__(RunOptimizer)
        out.params = list(params)
        out.kinds = [self.kinds[i] for i in index]
        out.lrs = [self.lrs[i] for i in index]
        out.decay = [self.decay[i] for i in index]
        out.betas, out.eps = self.betas, self.eps
        out.steps = [self.steps[i] for i in index]
        out.b1t = [self.b1t[i] for i in index]
        out.b2t = [self.b2t[i] for i in index]
        rows = torch.as_tensor(list(index), dtype=torch.long, device=self.params[0].device)
        out.exp_avg = [m.index_select(0, rows) for m in self.exp_avg]
        out.exp_avg_sq = [v.index_select(0, rows) for v in self.exp_avg_sq]
        return out
