"""The DAG task: path counting and the verifier on hand-built graphs."""

import itertools

import pytest
import torch

from passk_companion.model.tasks import DagTask, make_dag_task
from passk_companion.model.tasks.dag import count_paths


def diamond() -> DagTask:
    """0 -> 1 -> 3, 0 -> 2 -> 3, 0 -> 3, 3 -> 4: three paths 0 -> 3, three 0 -> 4."""
    adj = torch.zeros(5, 5, dtype=torch.bool)
    for a, b in [(0, 1), (1, 3), (0, 2), (2, 3), (0, 3), (3, 4)]:
        adj[a, b] = True
    pairs = torch.tensor([[0, 3]])
    return DagTask(adj, count_paths(adj), torch.tensor([[1, 4]]), pairs, max_path=5)


def brute_force_paths(adj, s, t):
    n = adj.shape[0]
    count = 0
    for length in range(0, n):
        for mid in itertools.permutations(range(n), length):
            path = (s, *mid, t) if s != t else (s,)
            if all(adj[a, b] for a, b in itertools.pairwise(path)):
                count += 1
        if s == t:
            break
    return count


def test_count_paths_on_the_diamond():
    task = diamond()
    assert task.paths[0, 3] == 3 and task.paths[0, 4] == 3 and task.paths[1, 4] == 1
    assert task.paths[4, 0] == 0 and task.paths[2, 2] == 1


def test_count_paths_against_brute_force():
    g = torch.Generator().manual_seed(0)
    adj = torch.triu(torch.rand(6, 6, generator=g) < 0.5, diagonal=1)
    paths = count_paths(adj)
    for s in range(6):
        for t in range(s + 1, 6):
            assert paths[s, t] == brute_force_paths(adj, s, t)


@pytest.mark.parametrize(
    ("answer", "ok"),
    [
        ([0, 1, 3, "E"], 1),
        ([0, 3, "E"], 1),
        ([0, 2, 3, "E", "P"], 1),
        ([0, 1, 3], 0),  # no EOS
        ([0, 1, 2, 3, "E"], 0),  # 1 -> 2 is not an edge
        ([1, 3, "E"], 0),  # wrong start
        ([0, 1, "E"], 0),  # wrong end
        (["E"], 0),  # empty path
        ([0, "S", 3, "E"], 0),  # a non-node token
        ([0, 3, 4, "E"], 0),  # goes past the target
    ],
)
def test_verifier(answer, ok):
    task = diamond()
    code = {"E": task.eos, "P": task.pad, "S": task.sep}
    row = [code.get(a, a) for a in answer]
    row += [task.pad] * (6 - len(row))
    got = task.verify(torch.tensor([[0, 3]]), torch.tensor([row]))
    assert got.tolist() == [float(ok)]


def test_random_walks_are_valid_and_splits_disjoint():
    task = make_dag_task(24, 5, 0.5, rl_fraction=0.4, max_distance=8, seed=3)
    walks = task.random_walks(task.pretrain_pairs, torch.Generator().manual_seed(0))
    assert torch.all(task.verify(task.pretrain_pairs, walks[:, 3:]) == 1)
    pre = {tuple(p) for p in task.pretrain_pairs.tolist()}
    held = {tuple(p) for p in task.rl_pairs.tolist()}
    assert not pre & held
    assert all(task.paths[s, t] >= 2 for s, t in held)


def test_bad_task_parameters():
    with pytest.raises(ValueError, match="n_nodes"):
        make_dag_task(2)
    with pytest.raises(ValueError, match="too few"):
        make_dag_task(8, 2, 0.05, max_distance=3)
