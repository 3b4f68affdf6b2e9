"""The paper's diagnostic on a table of rollouts: pass@k, Situation I, alpha_k and the gap.

Input: N rollouts, each with a group id (the prompt, verl's `uid`), a reward and optionally a
step and an answer. Groups may be ragged (n_g rollouts in group g). Notation of arXiv 2511.16231
(Sec. 3): J_1(x) is the probability that one sample of prompt x is correct, J_k = pass@k.

Per group g, with n_g rollouts of which c_g are correct (0/1 rewards):

    pass@k  rho(n_g, c_g, k) = 1 - C(n_g - c_g, k) / C(n_g, k)      (Chen et al. 2021), k <= n_g,
            the unbiased estimate of J_k
            (`passk_companion.objectives.estimators.pass_at_k_unbiased`);
    J_1     c_g / n_g, the unbiased estimate of J_1 (= rho(n_g, c_g, 1));
    alpha_k k (1 - J_1)^(k - 1) at that estimate: the per-prompt factor of Theorem 3.1,
            grad J_k = alpha_k grad J_1 (`passk_companion.theory.passk.alpha_k`);
    gap     rho(n_g, c_g, k) - c_g / n_g, unbiased for Delta(k) = J_k - J_1 (Sec. 3.2);
    Situation I   c_g = 0: every sampled pass@k estimate and every weight of a pass@k objective
            is exactly zero (no signal); it happens with probability (1 - J_1)^n_g;
    all right     c_g = n_g (no signal for any group-baseline objective either).

Real-valued rewards (not all 0/1, and no `threshold`): the curve is max@k, the mean over the
C(n_g, k) k-subsets of their maximum reward, (1/C(n_g, k)) sum_{i>=k} C(i-1, k-1) g_(i) over the
ascending sort (Walder & Karkhanis 2025; the coefficients of `objectives.passk_family`), unbiased
for E[max of k rewards]; J_1 is the group's mean reward. Theorem 3.1 stops there (max@k is not a
function of E[r]), so alpha_k, Situation I and the all-right share are not defined (None) unless
a `threshold` makes the rewards 0/1 (correct = reward >= threshold).

Every mean "over prompts" is over the groups for which it is defined (pass@k: n_g >= k). The
interval is a percentile bootstrap over prompts (groups resampled with replacement). All of it is
vectorised over rollouts: one factorisation of the ids, bincounts, one call of the estimator.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from passk_companion.objectives.passk_family import subset_coefficients
from passk_companion.theory.passk import alpha_k, pass_at_k_unbiased

__all__ = [
    "Diagnostics",
    "StepTrend",
    "default_ks",
    "group_codes",
    "size_buckets",
    "diagnose",
    "bootstrap_means",
    "trend",
]

# Working memory of one bootstrap chunk, in elements of the (resamples x groups) index table.
_BOOT_ELEMENTS = 1 << 23


def default_ks(n_max: int) -> list[int]:
    """k = 1, 2, 4, ... below n_max, and n_max itself (verl's best@k sizes, plus k = 1)."""
    if n_max < 1:
        raise ValueError(f"n_max must be >= 1, got {n_max}")
    ks, k = [1], 2
    while k < n_max:
        ks.append(k)
        k *= 2
    if n_max > 1:
        ks.append(n_max)
    return ks


def group_codes(values: Any, what: str = "group ids") -> tuple[np.ndarray, np.ndarray]:
    """Integer codes 0..G-1 of N labels in order of first appearance, and the G labels
    (`pandas.factorize`); a missing label (NaN, None) raises ValueError naming its row."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be one-dimensional, got shape {arr.shape}")
    codes, labels = pd.factorize(arr, use_na_sentinel=True)
    if codes.size and codes.min() < 0:
        row = int(np.flatnonzero(codes < 0)[0])
        raise ValueError(f"{what}: row {row} is missing (NaN or None)")
    return codes.astype(np.int64), np.asarray(labels)


def _rewards(values: Any) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError("rewards must be numbers") from None
    if arr.ndim != 1:
        raise ValueError(f"rewards must be one-dimensional, got shape {arr.shape}")
    bad = ~np.isfinite(arr)
    if bad.any():
        raise ValueError(f"rewards: row {int(np.flatnonzero(bad)[0])} is not finite (NaN or inf)")
    return arr


def _group_mean(codes: np.ndarray, values: np.ndarray, groups: int) -> np.ndarray:
    sums = np.bincount(codes, weights=values, minlength=groups)
    counts = np.bincount(codes, minlength=groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts


def _nanmean_columns(table: np.ndarray) -> np.ndarray:
    defined = ~np.isnan(table)
    counts = defined.sum(0)
    sums = np.where(defined, table, 0.0).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def bootstrap_means(
    table: np.ndarray, *, resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap over rows (prompts) of the column means of `table` (G, K).

    Each resample draws G rows with replacement; its mean of column j is over the drawn rows
    where column j is defined (not NaN). Returns the (1 -+ confidence)/2 quantiles of the
    resampled means, each (K,). A resample enters only through how often it draws each row,
    a Multinomial(G, 1/G, ..., 1/G) count vector, and the means are matrix products of counts.
    Rows that repeat (0/1 rewards give at most n + 1 distinct rows per group size) are merged
    first: the counts of U distinct rows are Multinomial(G, m_1/G, ..., m_U/G) for their
    multiplicities m_u, the same law, drawn in O(resamples x U) time, in chunks of resamples that
    bound the memory. Otherwise the rows are drawn (`rng.integers(0, G, (resamples, G))`, chunked)
    and counted."""
    table = np.asarray(table, dtype=np.float64)
    if table.ndim != 2 or table.shape[0] < 1:
        raise ValueError(f"table must be (groups, columns) with groups >= 1, got {table.shape}")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    groups = table.shape[0]
    defined = (~np.isnan(table)).astype(np.float64)
    values = np.where(defined > 0, table, 0.0)
    rng = np.random.default_rng(seed)
    rows, multiplicity = np.unique(np.hstack([values, defined]), axis=0, return_counts=True)
    if 2 * rows.shape[0] <= groups:
        half = table.shape[1]
        chunk = max(1, min(resamples, _BOOT_ELEMENTS // rows.shape[0]))
        means = np.empty((resamples, half))
        for start in range(0, resamples, chunk):  # (chunk x U) counts at a time
            size = min(chunk, resamples - start)
            counts = rng.multinomial(groups, multiplicity / groups, size=size).astype(float)
            with np.errstate(invalid="ignore", divide="ignore"):
                means[start : start + size] = (counts @ rows[:, :half]) / (counts @ rows[:, half:])
    else:
        chunk = max(1, min(resamples, _BOOT_ELEMENTS // groups))
        means = np.empty((resamples, table.shape[1]))
        for start in range(0, resamples, chunk):
            size = min(chunk, resamples - start)
            idx = rng.integers(0, groups, size=(size, groups))
            flat = (idx + groups * np.arange(size)[:, None]).ravel()
            drawn = np.bincount(flat, minlength=size * groups).reshape(size, groups)
            drawn = drawn.astype(float)
            with np.errstate(invalid="ignore", divide="ignore"):
                means[start : start + size] = (drawn @ values) / (drawn @ defined)
    alpha = (1 - confidence) / 2
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a column never defined: NaN
        low, high = np.nanquantile(means, [alpha, 1 - alpha], axis=0)
    return low, high


@dataclass(frozen=True)
class Diagnostics:
    """The diagnostic of one reward table (see the module docstring for the definitions).

    Per group (rows in order of first appearance of their id): `groups` (labels), `n` (sizes),
    `correct` (c_g, or None for real rewards), `j1` (the J_1 estimate), `per_group` (G, K) with
    pass@k (max@k for real rewards) and NaN where k > n_g, `alpha` (G, K) or None,
    `distinct_correct` (G,) or None. `ks` are the k values of the columns; `metric` is
    "pass@k" or "max@k"."""

    groups: np.ndarray
    n: np.ndarray
    ks: np.ndarray
    metric: str
    j1: np.ndarray
    per_group: np.ndarray
    correct: np.ndarray | None
    alpha: np.ndarray | None
    zero_variance: np.ndarray
    distinct_correct: np.ndarray | None = None
    threshold: float | None = None
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def n_prompts(self) -> int:
        return int(self.groups.size)

    @property
    def n_rollouts(self) -> int:
        return int(self.n.sum())

    @property
    def binary(self) -> bool:
        return self.correct is not None

    @property
    def curve(self) -> np.ndarray:
        """Mean over prompts of pass@k (max@k), (K,): over the groups with n_g >= k."""
        return _nanmean_columns(self.per_group)

    @property
    def groups_at_k(self) -> np.ndarray:
        """How many groups enter the mean of each k (those with n_g >= k), (K,)."""
        return (~np.isnan(self.per_group)).sum(0)

    @property
    def gap(self) -> np.ndarray:
        """Mean over prompts of pass@k - pass@1 (max@k - mean reward), (K,)."""
        return _nanmean_columns(self.per_group - self.j1[:, None])

    @property
    def situation_I_share(self) -> float | None:
        """Share of groups with no correct rollout (Situation I), or None for real rewards."""
        return None if self.correct is None else float(np.mean(self.correct == 0))

    @property
    def all_right_share(self) -> float | None:
        """Share of groups whose rollouts are all correct, or None for real rewards."""
        return None if self.correct is None else float(np.mean(self.correct == self.n))

    @property
    def zero_variance_share(self) -> float:
        """Share of groups whose rewards are all equal: zero signal for a group baseline."""
        return float(np.mean(self.zero_variance))

    def interval(
        self, *, resamples: int = 1000, confidence: float = 0.95, seed: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        """Percentile bootstrap interval over prompts of the curve, each (K,)."""
        key = ("interval", resamples, confidence, seed)
        if key not in self._cache:
            self._cache[key] = bootstrap_means(
                self.per_group, resamples=resamples, confidence=confidence, seed=seed
            )
        return self._cache[key]

    def alpha_quantiles(self, qs: Sequence[float] = (0.1, 0.25, 0.5, 0.75, 0.9)) -> np.ndarray:
        """Quantiles over groups of alpha_k, (len(qs), K); NaN for real rewards."""
        if self.alpha is None:
            return np.full((len(qs), self.ks.size), np.nan)
        return np.quantile(self.alpha, qs, axis=0)

    def metrics(self, prefix: str = "") -> dict[str, float]:
        """Flat scalar metrics for a trainer's logger: `{prefix}pass@k` (or `max@k`) for every
        k, `{prefix}gap@k`, `{prefix}alpha@k/mean` and `/median`, the shares, `n_groups`."""
        name = "pass" if self.binary else "max"
        out: dict[str, float] = {f"{prefix}n_groups": float(self.n_prompts)}
        alpha_mean = None if self.alpha is None else self.alpha.mean(0)
        alpha_median = None if self.alpha is None else np.median(self.alpha, 0)
        for j, k in enumerate(self.ks.tolist()):
            if self.groups_at_k[j] == 0:
                continue
            out[f"{prefix}{name}@{k}"] = float(self.curve[j])
            if k > 1:
                out[f"{prefix}gap@{k}"] = float(self.gap[j])
                if alpha_mean is not None and alpha_median is not None:
                    out[f"{prefix}alpha@{k}/mean"] = float(alpha_mean[j])
                    out[f"{prefix}alpha@{k}/median"] = float(alpha_median[j])
        if self.binary:
            out[f"{prefix}situation_I_share"] = float(self.situation_I_share or 0.0)
            out[f"{prefix}all_right_share"] = float(self.all_right_share or 0.0)
        out[f"{prefix}zero_variance_share"] = self.zero_variance_share
        if self.distinct_correct is not None:
            out[f"{prefix}distinct_correct/mean"] = float(self.distinct_correct.mean())
        return out

    def summary(
        self, *, resamples: int = 1000, confidence: float = 0.95, seed: int = 0
    ) -> dict[str, Any]:
        """A JSON-ready dict: `pass_at_k` (k -> mean over prompts), its interval, the shares,
        alpha_k quantiles, the gap, `n_prompts` and `n_rollouts`."""
        low, high = self.interval(resamples=resamples, confidence=confidence, seed=seed)
        keep = self.groups_at_k > 0
        ks = [int(k) for k in self.ks[keep]]
        qs = (0.1, 0.25, 0.5, 0.75, 0.9)
        alpha_q = self.alpha_quantiles(qs)[:, keep]
        return {
            "metric": self.metric,
            "n_prompts": self.n_prompts,
            "n_rollouts": self.n_rollouts,
            "n_per_prompt": {"min": int(self.n.min()), "max": int(self.n.max())},
            "threshold": self.threshold,
            "pass_at_k": {str(k): _num(v) for k, v in zip(ks, self.curve[keep], strict=True)},
            "pass_at_k_interval": {
                "confidence": confidence,
                "resamples": resamples,
                "low": {str(k): _num(v) for k, v in zip(ks, low[keep], strict=True)},
                "high": {str(k): _num(v) for k, v in zip(ks, high[keep], strict=True)},
            },
            "prompts_at_k": {
                str(k): int(v) for k, v in zip(ks, self.groups_at_k[keep], strict=True)
            },
            "gap": {str(k): _num(v) for k, v in zip(ks, self.gap[keep], strict=True)},
            "situation_I_share": self.situation_I_share,
            "all_right_share": self.all_right_share,
            "zero_variance_share": self.zero_variance_share,
            "alpha_k_quantiles": None
            if self.alpha is None
            else {
                str(k): {str(q): _num(alpha_q[i, j]) for i, q in enumerate(qs)}
                for j, k in enumerate(ks)
            },
            "distinct_correct_mean": None
            if self.distinct_correct is None
            else float(self.distinct_correct.mean()),
        }


def _num(x: float) -> float | None:
    """A float for JSON: NaN becomes None."""
    x = float(x)
    return None if math.isnan(x) else x


def _check_ks(ks: Sequence[int] | None, n_max: int) -> np.ndarray:
    if ks is None:
        return np.asarray(default_ks(n_max), dtype=np.int64)
    arr = np.asarray(list(ks))
    if arr.size == 0 or arr.ndim != 1:
        raise ValueError("ks must be a non-empty list of integers")
    if not np.issubdtype(arr.dtype, np.integer) or np.any(arr < 1):
        raise ValueError(f"every k must be an integer >= 1, got {list(ks)}")
    if np.all(arr > n_max):
        raise ValueError(f"every k exceeds the largest group (n = {n_max}): {list(ks)}")
    return np.unique(arr.astype(np.int64))


def size_buckets(
    codes: np.ndarray, sizes: np.ndarray
) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """Ragged groups as one dense matrix per group size: for each distinct size s, yields
    (s, rollouts, row, col): the indices of the rollouts in groups of size s, and the cell of
    each in an (m_s, s) matrix (row = the group's rank among groups of size s, col = the
    rollout's rank inside its group, in input order). A loop over distinct sizes, not over
    rollouts or groups."""
    order = np.argsort(codes, kind="stable")
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    sorted_codes = codes[order]
    position = np.arange(codes.size) - starts[sorted_codes]
    for size in np.unique(sizes).tolist():
        members = sizes == size
        rank = np.cumsum(members) - 1
        picked = members[sorted_codes]
        yield int(size), order[picked], rank[sorted_codes[picked]], position[picked]


def _max_at_k(codes: np.ndarray, rewards: np.ndarray, sizes: np.ndarray, ks: np.ndarray):
    """max@k per group (G, K) for real rewards: per group size s, one ascending sort of the
    (m_s, s) matrix and one product with the columns top_k(i) = C(i-1, k-1) / C(s, k) of
    `subset_coefficients(s, k)`, i.e. `max_at_k_estimate` for every k at once."""
    out = np.full((sizes.size, ks.size), np.nan)
    for size, rollouts, row, col in size_buckets(codes, sizes):
        table = np.empty((int(row.max()) + 1, size))
        table[row, col] = rewards[rollouts]
        table.sort(axis=1)
        usable = [j for j, k in enumerate(ks.tolist()) if k <= size]
        top = np.stack([subset_coefficients(size, int(ks[j]))[0].numpy() for j in usable], 1)
        out[np.ix_(sizes == size, usable)] = table @ top
    return out


def diagnose(
    group_ids: Any,
    rewards: Any,
    ks: Sequence[int] | None = None,
    *,
    answers: Any = None,
    threshold: float | None = None,
    min_group: int = 2,
) -> Diagnostics:
    """The diagnostic of N rollouts: `group_ids` (N,) any hashable labels (the prompt or verl's
    uid; ragged groups allowed), `rewards` (N,) numbers, `answers` (N,) optional labels of the
    final answer (distinct correct answers per group), `ks` the k values (default
    `default_ks(n_max)`; a k above a group's size is NaN for that group).

    0/1 rewards give pass@k; real rewards give max@k, unless `threshold` is set (then
    correct = reward >= threshold, and everything is computed on the 0/1 correctness).
    Raises ValueError (one line) for mismatched lengths, missing ids, non-finite rewards, or a
    group smaller than `min_group` (pass@k of one sample is pass@1: no curve)."""
    codes, labels = group_codes(group_ids, "group ids")
    values = _rewards(rewards)
    if codes.size != values.size:
        raise ValueError(f"{codes.size} group ids but {values.size} rewards")
    if codes.size == 0:
        raise ValueError("no rollouts")
    groups = labels.size
    sizes = np.bincount(codes, minlength=groups)
    small = sizes < min_group
    if small.any():
        g = int(np.flatnonzero(small)[0])
        row = int(np.flatnonzero(codes == g)[0])
        raise ValueError(
            f"group {_label(labels[g])!r} (row {row}) has {sizes[g]} rollout(s); the "
            f"diagnostic needs n >= {min_group} per group"
        )
    ks_arr = _check_ks(ks, int(sizes.max()))
    if threshold is not None:
        if not math.isfinite(threshold):
            raise ValueError(f"threshold must be finite, got {threshold}")
        values = (values >= threshold).astype(np.float64)
    binary = bool(np.all((values == 0) | (values == 1)))
    j1 = _group_mean(codes, values, groups)
    correct = alpha = distinct = None
    too_big = ks_arr[None, :] > sizes[:, None]
    if binary:
        correct = np.bincount(codes, weights=values, minlength=groups).round().astype(np.int64)
        # pass@k and alpha_k depend on (n_g, c_g) alone: compute them once per distinct pair
        pairs, inverse = np.unique(sizes * (int(sizes.max()) + 1) + correct, return_inverse=True)
        n_u, c_u = pairs // (int(sizes.max()) + 1), pairs % (int(sizes.max()) + 1)
        k_eff = np.minimum(ks_arr[None, :], n_u[:, None])
        per_pair = np.asarray(pass_at_k_unbiased(n_u[:, None], c_u[:, None], k_eff))
        per_group = np.where(too_big, np.nan, per_pair[inverse])
        alpha = np.asarray(alpha_k((c_u / n_u)[:, None], ks_arr[None, :]), dtype=float)[inverse]
        if answers is not None:
            answer_codes, answer_labels = group_codes(answers, "answers")
            if answer_codes.size != codes.size:
                raise ValueError(f"{codes.size} group ids but {answer_codes.size} answers")
            hit = values > 0
            pairs = np.unique(codes[hit] * max(1, answer_labels.size) + answer_codes[hit])
            distinct = np.bincount(pairs // max(1, answer_labels.size), minlength=groups)
        zero_var = (correct == 0) | (correct == sizes)
    else:
        per_group = _max_at_k(codes, values, sizes, ks_arr)
        order = np.argsort(codes, kind="stable")
        starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
        low = np.minimum.reduceat(values[order], starts)
        zero_var = low == np.maximum.reduceat(values[order], starts)
    return Diagnostics(
        groups=labels,
        n=sizes,
        ks=ks_arr,
        metric="pass@k" if binary else "max@k",
        j1=j1,
        per_group=per_group,
        correct=correct,
        alpha=alpha,
        zero_variance=zero_var,
        distinct_correct=distinct,
        threshold=threshold,
    )


@dataclass(frozen=True)
class StepTrend:
    """Per training step (rows of `steps`, ascending): mean J_1, pass@k and the gap at one k,
    Situation I share and prompt counts; and the gap at matched J_1: the mean per-prompt gap in
    bins of the per-prompt J_1 estimate (`bins` edges, interior estimates 0 < J_1 < 1 only),
    `matched_gap` (bins, steps) with `matched_count`, NaN for an empty cell.

    Why matched: the expected per-prompt gap is Delta(J_1) = (1 - J_1)(1 - (1 - J_1)^(k-1)), a
    function of J_1 alone (Theorem 3.1, i.i.d. draws). So the fall of the batch gap over training
    is the J_1 -> 1 of Theorem 3.2 (alpha_k -> 0, Delta -> 0) exactly when the matched rows stay
    flat; a trend inside a bin says the draws are not i.i.d. (or the bin is too wide)."""

    steps: np.ndarray
    k: int
    j1: np.ndarray
    pass_at_k: np.ndarray
    gap: np.ndarray
    situation_I_share: np.ndarray
    n_prompts: np.ndarray
    bins: np.ndarray
    matched_gap: np.ndarray
    matched_count: np.ndarray

    def summary(self) -> dict[str, Any]:
        steps = [_label(s) for s in self.steps]
        return {
            "k": self.k,
            "steps": steps,
            "pass_at_1": [_num(v) for v in self.j1],
            "pass_at_k": [_num(v) for v in self.pass_at_k],
            "gap": [_num(v) for v in self.gap],
            "situation_I_share": [_num(v) for v in self.situation_I_share],
            "n_prompts": [int(v) for v in self.n_prompts],
            "matched_j1": {
                "bins": [float(b) for b in self.bins],
                "gap": [[_num(v) for v in row] for row in self.matched_gap],
                "count": [[int(v) for v in row] for row in self.matched_count],
            },
        }


def _label(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    return x


def trend(
    steps: Any,
    group_ids: Any,
    rewards: Any,
    k: int,
    *,
    threshold: float | None = None,
    bins: int = 5,
    min_group: int = 2,
) -> StepTrend:
    """The diagnostic per training step at one k: a group is a (step, prompt) pair. Real rewards
    need a `threshold` here (Situation I and the matched gap are defined for 0/1 correctness)."""
    step_codes, step_labels = group_codes(steps, "steps")
    prompt_codes, _ = group_codes(group_ids, "group ids")
    if step_codes.size != prompt_codes.size:
        raise ValueError(f"{step_codes.size} steps but {prompt_codes.size} group ids")
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    width = int(prompt_codes.max()) + 1 if prompt_codes.size else 1
    pair = step_codes * width + prompt_codes
    diag = diagnose(pair, rewards, [k], threshold=threshold, min_group=min_group)
    if not diag.binary:
        raise ValueError("the step trend needs 0/1 rewards: pass a threshold for real rewards")
    group_step = diag.groups.astype(np.int64) // width  # the groups are the pair codes
    n_steps = step_labels.size
    order = _sort_order(step_labels)
    count = np.bincount(group_step, minlength=n_steps)
    passk = diag.per_group[:, 0]
    defined = ~np.isnan(passk)

    def mean(values: np.ndarray, where: np.ndarray) -> np.ndarray:
        s = np.bincount(group_step[where], weights=values[where], minlength=n_steps)
        c = np.bincount(group_step[where], minlength=n_steps)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(c > 0, s / np.maximum(c, 1), np.nan)

    everywhere = np.ones(diag.n_prompts, dtype=bool)
    j1 = mean(diag.j1, everywhere)
    pk = mean(np.nan_to_num(passk), defined)
    gap = mean(np.nan_to_num(passk) - diag.j1, defined)
    sit = mean((diag.correct == 0).astype(float), everywhere)
    edges = np.linspace(0.0, 1.0, bins + 1)
    interior = defined & (diag.j1 > 0) & (diag.j1 < 1)
    which = np.clip(np.searchsorted(edges, diag.j1, side="right") - 1, 0, bins - 1)
    cell = which * n_steps + group_step
    cell_sum = np.bincount(
        cell[interior], weights=(passk - diag.j1)[interior], minlength=bins * n_steps
    )
    cell_count = np.bincount(cell[interior], minlength=bins * n_steps)
    with np.errstate(invalid="ignore", divide="ignore"):
        matched = np.where(cell_count > 0, cell_sum / np.maximum(cell_count, 1), np.nan)
    matched = matched.reshape(bins, n_steps)[:, order]
    return StepTrend(
        steps=step_labels[order],
        k=int(k),
        j1=j1[order],
        pass_at_k=pk[order],
        gap=gap[order],
        situation_I_share=sit[order],
        n_prompts=count[order],
        bins=edges,
        matched_gap=matched,
        matched_count=cell_count.reshape(bins, n_steps)[:, order],
    )


def _sort_order(labels: np.ndarray) -> np.ndarray:
    """Ascending order of step labels: numerically where they are numbers, else as text."""
    try:
        return np.argsort(labels.astype(np.float64), kind="stable")
    except (TypeError, ValueError):
        return np.argsort(labels.astype(str), kind="stable")
