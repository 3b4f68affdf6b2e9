"""Path-finding in a random DAG: a verifiable task whose correct answers (paths) can be counted.

Graph: nodes 0..N-1; an edge i -> j exists, independently with probability q, for i < j < i + w.
Prompt: (source s, target t). Answer: a token path s, v_1, ..., t, then EOS. The verifier accepts
a path iff it starts at s, ends at t, and every consecutive pair is an edge. The number of distinct
valid paths from s to t is computed exactly by dynamic programming over the DAG.

Token layout: node ids 0..N-1, then SEP = N, EOS = N + 1, PAD = N + 2 (vocabulary N + 3).
A sequence is [s, t, SEP, path..., EOS, PAD...].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["DagTask", "make_dag_task", "count_paths"]


def count_paths(adj: Tensor) -> Tensor:
    """paths[s, t] = number of distinct directed paths s -> t (paths[s, s] = 1), exact int64.

    The DAG is topologically ordered by node id, so paths[:, t] = sum_{u < t, u -> t} paths[:, u].
    """
    n = adj.shape[0]
    paths = torch.zeros(n, n, dtype=torch.int64)
    paths[torch.arange(n), torch.arange(n)] = 1
    a = adj.to(torch.int64)
    for t in range(n):
        paths[:, t] += paths @ a[:, t] if t > 0 else 0
    return paths


@dataclass(frozen=True)
class DagTask:
    """A seeded DAG with its pretraining and held-out RL (source, target) pairs."""

    adj: Tensor  # (N, N) bool
    paths: Tensor  # (N, N) int64, exact path counts
    pretrain_pairs: Tensor  # (P_pre, 2)
    rl_pairs: Tensor  # (P_rl, 2): held out from pretraining, >= 2 valid paths each
    max_path: int  # longest path (in nodes) over all pairs
    test_mask: Tensor | None = None  # (P_rl,) bool: RL pairs held out from RL too (evaluation)

    @property
    def rl_train_pairs(self) -> Tensor:
        """The RL pairs that RL trains on (all of them when there is no split)."""
        return self.rl_pairs if self.test_mask is None else self.rl_pairs[~self.test_mask]

    @property
    def rl_test_pairs(self) -> Tensor:
        """The RL pairs held out from RL, for evaluation (all of them when there is no split)."""
        return self.rl_pairs if self.test_mask is None else self.rl_pairs[self.test_mask]

    @property
    def n_nodes(self) -> int:
        return self.adj.shape[0]

    @property
    def sep(self) -> int:
        return self.n_nodes

    @property
    def eos(self) -> int:
        return self.n_nodes + 1

    @property
    def pad(self) -> int:
        return self.n_nodes + 2

    @property
    def vocab_size(self) -> int:
        return self.n_nodes + 3

    @property
    def max_new_tokens(self) -> int:
        """Answer length budget: the longest path plus EOS."""
        return self.max_path + 1

    def prompts(self, pairs: Tensor) -> Tensor:
        """[s, t, SEP] for each pair, shape (B, 3)."""
        return torch.cat([pairs, torch.full((len(pairs), 1), self.sep)], 1)

    def verify(self, pairs: Tensor, answers: Tensor) -> Tensor:
        """0/1 reward per answer: answers (B, L) token ids after the prompt of pairs (B, 2).

        Valid iff an EOS appears, every token before it is a node, the first is s, the last is t,
        and every consecutive pair of nodes is an edge. Vectorized over the batch."""
        b, length = answers.shape
        is_eos = answers == self.eos
        has_eos = is_eos.any(1)
        n_tok = torch.where(has_eos, is_eos.to(torch.int64).argmax(1), length)  # tokens before EOS
        pos = torch.arange(length)[None, :]
        body = pos < n_tok[:, None]
        nodes_ok = ((answers < self.n_nodes) | ~body).all(1)
        safe = answers.clamp(0, self.n_nodes - 1)
        first_ok = safe[:, 0] == pairs[:, 0]
        last = safe.gather(1, (n_tok - 1).clamp_min(0)[:, None])[:, 0]
        last_ok = last == pairs[:, 1]
        edge = self.adj[safe[:, :-1], safe[:, 1:]]
        edge_needed = pos[:, :-1] < (n_tok[:, None] - 1)
        edges_ok = (edge | ~edge_needed).all(1)
        ok = has_eos & (n_tok >= 1) & nodes_ok & first_ok & last_ok & edges_ok
        return ok.to(torch.float64)

    def valid_paths(self, pairs: Tensor) -> tuple[Tensor, Tensor]:
        """Every valid path of every pair, enumerated breadth-first over the DAG (vectorised over
        all partial paths at once): a partial path ending at u != t is extended by each successor
        v of u that can still reach t (paths[v, t] > 0), so every extension ends in a valid path.

        Returns (answers, owner): answers (M, max_new_tokens) are the answer tokens of the M paths
        (path, EOS, PAD...), owner (M,) the index of the pair each path belongs to. M equals
        sum(paths[s, t]) over the pairs (checked in the tests)."""
        pairs = pairs.to(torch.int64)
        reach = self.paths > 0
        rows = pairs[:, :1].clone()
        owner = torch.arange(len(pairs))
        done_rows: list[Tensor] = []
        done_owner: list[Tensor] = []
        for _ in range(self.max_path):
            at_target = rows[:, -1] == pairs[owner, 1]
            if at_target.any():
                done_rows.append(rows[at_target])
                done_owner.append(owner[at_target])
            rows, owner = rows[~at_target], owner[~at_target]
            if len(rows) == 0:
                break
            cand = self.adj[rows[:, -1]] & reach[:, pairs[owner, 1]].T  # (R, N)
            parent, nxt = cand.nonzero(as_tuple=True)
            rows = torch.cat([rows[parent], nxt[:, None]], 1)
            owner = owner[parent]
        width = self.max_new_tokens
        answers = torch.full((sum(len(r) for r in done_rows), width), self.pad, dtype=torch.int64)
        start = 0
        for block in done_rows:
            answers[start : start + len(block), : block.shape[1]] = block
            answers[start : start + len(block), block.shape[1]] = self.eos
            start += len(block)
        owner_all = torch.cat(done_owner) if done_owner else torch.zeros(0, dtype=torch.int64)
        order = torch.argsort(owner_all, stable=True)
        return answers[order], owner_all[order]

    def random_walks(self, pairs: Tensor, generator: torch.Generator) -> Tensor:
        """One random valid path per pair, as full sequences [s, t, SEP, path, EOS, PAD...] of
        length 3 + max_new_tokens: from the current node, step to a uniformly chosen successor
        that can still reach t (so walks are valid but not uniform over paths)."""
        b = len(pairs)
        seq = torch.full((b, 3 + self.max_new_tokens), self.pad, dtype=torch.int64)
        seq[:, :3] = self.prompts(pairs)
        cur = pairs[:, 0].clone()
        seq[:, 3] = cur
        done = cur == pairs[:, 1]
        reach = self.paths > 0
        for i in range(1, self.max_path):
            # successors of cur that reach the target
            cand = self.adj[cur] & reach[:, pairs[:, 1]].T
            weights = cand.to(torch.float64) + done[:, None].to(torch.float64)  # dummy row if done
            nxt = torch.multinomial(weights, 1, generator=generator)[:, 0]
            nxt = torch.where(done, cur, nxt)
            seq[:, 3 + i] = torch.where(done, torch.full_like(nxt, self.pad), nxt)
            cur = nxt
            newly = (~done) & (cur == pairs[:, 1])
            done = done | newly
        # EOS right after the target
        lengths = (seq[:, 3:] < self.n_nodes).sum(1)
        seq[torch.arange(b), 3 + lengths] = self.eos
        return seq


def make_dag_task(
    n_nodes: int = 32,
    window: int = 5,
    edge_prob: float = 0.6,
    rl_fraction: float = 0.2,
    min_distance: int = 3,
    max_distance: int = 8,
    seed: int = 0,
    test_fraction: float = 0.5,
) -> DagTask:
    """A seeded random DAG and its splits.

    Pairs (s, t) with min_distance <= t - s <= max_distance and at least one path form the pool;
    a `rl_fraction` of the pairs with >= 2 paths is held out for RL (never seen in pretraining);
    the rest are pretraining pairs. A `test_fraction` of the RL pairs (at random) is held out from
    RL too: the test prompts that evaluation reports on; RL trains on the others."""
    if n_nodes < 4 or window < 2:
        raise ValueError("need n_nodes >= 4 and window >= 2")
    if not 1 <= min_distance <= max_distance:
        raise ValueError("need 1 <= min_distance <= max_distance")
    if not 0 < edge_prob <= 1 or not 0 < rl_fraction < 1 or not 0 < test_fraction < 1:
        raise ValueError("edge_prob must lie in (0, 1], rl_fraction and test_fraction in (0, 1)")
    g = torch.Generator().manual_seed(seed)
    i = torch.arange(n_nodes)
    band = (i[None, :] > i[:, None]) & (i[None, :] < i[:, None] + window)
    adj = band & (torch.rand(n_nodes, n_nodes, generator=g) < edge_prob)
    paths = count_paths(adj)
    s, t = torch.meshgrid(i, i, indexing="ij")
    pool = (t - s >= min_distance) & (t - s <= max_distance) & (paths > 0)
    pairs = torch.stack([s[pool], t[pool]], 1)
    multi = paths[pairs[:, 0], pairs[:, 1]] >= 2
    perm = torch.randperm(len(pairs), generator=g)
    held = torch.zeros(len(pairs), dtype=torch.bool)
    candidates = perm[multi[perm]]
    held[candidates[: max(1, int(rl_fraction * int(multi.sum())))] if len(candidates) else []] = (
        True
    )
    if int(held.sum()) == 0 or int((~held).sum()) == 0:
        raise ValueError(
            "this graph has too few (source, target) pairs: raise n_nodes or edge_prob"
        )
    max_path = int((t - s)[pool].max()) + 1
    rl_pairs = pairs[held]
    n_test = int(round(test_fraction * len(rl_pairs)))
    if not 0 < n_test < len(rl_pairs):
        raise ValueError(
            f"{len(rl_pairs)} RL pairs cannot be split into train and test at test_fraction "
            f"{test_fraction}: raise n_nodes or rl_fraction"
        )
    test_mask = torch.zeros(len(rl_pairs), dtype=torch.bool)
    test_mask[torch.randperm(len(rl_pairs), generator=g)[:n_test]] = True
    return DagTask(adj, paths, pairs[~held], rl_pairs, max_path, test_mask)
