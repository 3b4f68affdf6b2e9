"""passk_companion.integrations.diagnostics against brute force: every k-subset of every group,
Python sets for the distinct answers, an explicit resampling loop for the bootstrap (no verl, no
TRL)."""

import itertools
import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from passk_companion.integrations import diagnostics as dg


@st.composite
def ragged_table(draw, binary=True, max_groups=6, max_n=7):
    """(group ids, rewards, answers) of a few ragged groups, rows shuffled."""
    sizes = draw(st.lists(st.integers(2, max_n), min_size=1, max_size=max_groups))
    ids, rewards, answers = [], [], []
    for g, n in enumerate(sizes):
        if binary:
            r = draw(st.lists(st.sampled_from([0.0, 1.0]), min_size=n, max_size=n))
        else:
            r = draw(
                st.lists(
                    st.floats(-2, 2, allow_nan=False).map(lambda x: round(x, 3)),
                    min_size=n,
                    max_size=n,
                )
            )
        ids += [f"p{g}"] * n
        rewards += r
        answers += draw(st.lists(st.sampled_from("abc"), min_size=n, max_size=n))
    perm = draw(st.permutations(range(len(ids))))
    return (
        np.array(ids, dtype=object)[perm],
        np.array(rewards)[perm],
        np.array(answers, dtype=object)[perm],
    )


def by_group(ids, values):
    out = {}
    for i, v in zip(ids, values, strict=True):
        out.setdefault(i, []).append(v)
    return out


def brute_max_at_k(values, k):
    """Mean over every k-subset of its maximum (pass@k for 0/1 values)."""
    subsets = list(itertools.combinations(values, k))
    return sum(max(s) for s in subsets) / len(subsets)


@settings(max_examples=60, deadline=None)
@given(ragged_table(binary=True))
def test_pass_at_k_and_shares_match_brute_force(table):
    ids, rewards, answers = table
    d = dg.diagnose(ids, rewards, ks=list(range(1, 8)), answers=answers)
    groups = by_group(ids, rewards)
    assert d.metric == "pass@k" and d.binary
    assert list(d.groups) == list(dict.fromkeys(ids))  # order of first appearance
    for row, g in enumerate(d.groups):
        vals = groups[g]
        assert d.n[row] == len(vals) and d.correct[row] == sum(vals)
        assert d.j1[row] == pytest.approx(sum(vals) / len(vals))
        for j, k in enumerate(d.ks):
            if k > len(vals):
                assert math.isnan(d.per_group[row, j])
            else:
                assert d.per_group[row, j] == pytest.approx(brute_max_at_k(vals, k), abs=1e-12)
            p = sum(vals) / len(vals)
            assert d.alpha[row, j] == pytest.approx(k * (1 - p) ** (k - 1), abs=1e-12)
    for j, k in enumerate(d.ks):
        defined = [brute_max_at_k(v, k) for v in groups.values() if len(v) >= k]
        gaps = [brute_max_at_k(v, k) - sum(v) / len(v) for v in groups.values() if len(v) >= k]
        if defined:
            assert d.curve[j] == pytest.approx(np.mean(defined), abs=1e-12)
            assert d.gap[j] == pytest.approx(np.mean(gaps), abs=1e-12)
        assert d.groups_at_k[j] == len(defined)
    assert d.situation_I_share == pytest.approx(np.mean([sum(v) == 0 for v in groups.values()]))
    assert d.all_right_share == pytest.approx(np.mean([sum(v) == len(v) for v in groups.values()]))
    assert d.zero_variance_share == pytest.approx(
        np.mean([len(set(v)) == 1 for v in groups.values()])
    )
    answer_groups = by_group(ids, list(zip(rewards, answers, strict=True)))
    for row, g in enumerate(d.groups):
        assert d.distinct_correct[row] == len({a for r, a in answer_groups[g] if r == 1})


@settings(max_examples=40, deadline=None)
@given(ragged_table(binary=False))
def test_real_rewards_give_max_at_k(table):
    ids, rewards, _ = table
    if np.all((rewards == 0) | (rewards == 1)):
        return  # drawn 0/1 by chance: the binary test covers it
    d = dg.diagnose(ids, rewards, ks=[1, 2, 3, 5])
    groups = by_group(ids, rewards)
    assert d.metric == "max@k" and not d.binary
    assert d.alpha is None and d.situation_I_share is None and d.all_right_share is None
    for row, g in enumerate(d.groups):
        for j, k in enumerate(d.ks):
            vals = groups[g]
            want = brute_max_at_k(vals, k) if k <= len(vals) else math.nan
            assert d.per_group[row, j] == pytest.approx(want, abs=1e-12, nan_ok=True)
        assert d.j1[row] == pytest.approx(np.mean(groups[g]))
    assert "max@2" in d.metrics() and "pass@2" not in d.metrics()


@settings(max_examples=30, deadline=None)
@given(ragged_table(binary=False), st.floats(-1, 1))
def test_threshold_is_the_binary_diagnostic_of_the_thresholded_rewards(table, threshold):
    ids, rewards, _ = table
    a = dg.diagnose(ids, rewards, threshold=threshold, ks=[1, 2])
    b = dg.diagnose(ids, (rewards >= threshold).astype(float), ks=[1, 2])
    np.testing.assert_array_equal(a.per_group, b.per_group)
    assert a.situation_I_share == b.situation_I_share and a.threshold == threshold


def test_issue_example_one_correct_of_eight():
    d = dg.diagnose(["x"] * 8, [1, 0, 0, 0, 0, 0, 0, 0])
    assert list(d.ks) == [1, 2, 4, 8]
    np.testing.assert_allclose(d.curve, [0.125, 0.25, 0.5, 1.0], atol=1e-15)
    m = d.metrics("c/")
    assert m["c/pass@8"] == 1.0 and m["c/pass@4"] == 0.5 and m["c/situation_I_share"] == 0.0


def test_situation_I_and_all_right():
    d = dg.diagnose(["a"] * 4 + ["b"] * 4 + ["c"] * 4, [0] * 4 + [1] * 4 + [1, 0, 0, 0])
    assert d.situation_I_share == pytest.approx(1 / 3)
    assert d.all_right_share == pytest.approx(1 / 3)
    assert d.zero_variance_share == pytest.approx(2 / 3)
    np.testing.assert_array_equal(d.per_group[0], 0.0)  # no correct: every estimate is zero


def loop_means(table, draws):
    """The mean of each column over the drawn rows where it is defined, one resample a row."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a resample with no defined row: NaN
        return np.array([[np.nanmean(table[i, j]) for j in range(table.shape[1])] for i in draws])


@settings(max_examples=20, deadline=None)
@given(st.integers(2, 12), st.integers(0, 2**31))
def test_bootstrap_of_distinct_rows_is_the_resampling_loop(groups, seed):
    table = np.random.default_rng(seed).random((groups, 3))
    table[::3, 2] = np.nan  # a column defined on some rows only
    low, high = dg.bootstrap_means(table, resamples=200, seed=seed)
    idx = np.random.default_rng(seed).integers(0, groups, size=(200, groups))
    want_low, want_high = np.nanquantile(loop_means(table, idx), [0.025, 0.975], axis=0)
    np.testing.assert_allclose(low, want_low, atol=1e-12)
    np.testing.assert_allclose(high, want_high, atol=1e-12)
    assert np.all(low <= high + 1e-12)


@settings(max_examples=20, deadline=None)
@given(
    st.lists(
        st.lists(st.sampled_from([0.0, 1.0]), min_size=2, max_size=2), min_size=8, max_size=30
    ),
    st.integers(0, 2**31),
)
def test_bootstrap_of_repeated_rows_counts_the_distinct_rows(rows, seed):
    """Repeated rows: multinomial counts of the distinct rows (the same law as drawing rows),
    checked against the loop over the rows those counts stand for."""
    table = np.array(rows)
    table[0, 1] = np.nan
    unique, inverse, mult = np.unique(
        np.hstack([np.nan_to_num(table), ~np.isnan(table)]),
        axis=0,
        return_inverse=True,
        return_counts=True,
    )
    if 2 * len(unique) > len(table):
        return  # few repeats: the distinct-rows test covers it
    counts = np.random.default_rng(seed).multinomial(len(table), mult / len(table), size=100)
    members = [np.flatnonzero(inverse.ravel() == u)[0] for u in range(len(unique))]
    draws = [np.repeat(members, c) for c in counts]
    want = np.nanquantile(loop_means(table, draws), [0.025, 0.975], axis=0)
    np.testing.assert_allclose(dg.bootstrap_means(table, resamples=100, seed=seed), want)


def test_both_bootstrap_paths_have_the_same_law():
    """On 0/1 rows (merged path) the interval matches plain row resampling (20000 resamples)."""
    table = (np.random.default_rng(5).random((400, 2)) < [0.3, 0.8]).astype(float)
    low, high = dg.bootstrap_means(table, resamples=20000, seed=1)
    idx = np.random.default_rng(2).integers(0, 400, size=(20000, 400))
    want_low, want_high = np.quantile(table[idx].mean(1), [0.025, 0.975], axis=0)
    np.testing.assert_allclose(low, want_low, atol=0.006)
    np.testing.assert_allclose(high, want_high, atol=0.006)


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 3),
            st.integers(0, 2),
            st.lists(st.sampled_from([0, 1]), min_size=2, max_size=4),
        ),
        min_size=1,
        max_size=12,
        unique_by=lambda t: (t[0], t[1]),
    )
)
def test_trend_matches_a_groupby(cells):
    steps, prompts, rewards = [], [], []
    for step, prompt, rs in cells:
        steps += [step * 10] * len(rs)
        prompts += [f"q{prompt}"] * len(rs)
        rewards += rs
    t = dg.trend(steps, prompts, rewards, k=2, bins=4)
    want_steps = sorted({s * 10 for s, _, _ in cells})
    assert [int(s) for s in t.steps] == want_steps
    for col, step in enumerate(want_steps):
        groups = [rs for s, _, rs in cells if s * 10 == step]
        assert t.n_prompts[col] == len(groups)
        assert t.j1[col] == pytest.approx(np.mean([np.mean(g) for g in groups]))
        assert t.pass_at_k[col] == pytest.approx(np.mean([brute_max_at_k(g, 2) for g in groups]))
        gaps = [brute_max_at_k(g, 2) - np.mean(g) for g in groups]
        assert t.gap[col] == pytest.approx(np.mean(gaps))
        assert t.situation_I_share[col] == pytest.approx(np.mean([sum(g) == 0 for g in groups]))
        for b in range(4):
            lo, hi = t.bins[b], t.bins[b + 1]
            inside = [
                brute_max_at_k(g, 2) - np.mean(g)
                for g in groups
                if 0 < np.mean(g) < 1 and (lo <= np.mean(g) < hi or (b == 3 and np.mean(g) == 1))
            ]
            assert t.matched_count[b, col] == len(inside)
            if inside:
                assert t.matched_gap[b, col] == pytest.approx(np.mean(inside))
            else:
                assert math.isnan(t.matched_gap[b, col])


def test_summary_is_json_ready():
    import json

    d = dg.diagnose(["a"] * 4 + ["b"] * 2, [1, 0, 0, 1, 0, 0])
    s = json.loads(json.dumps(d.summary(resamples=50)))
    assert s["pass_at_k"] == {"1": pytest.approx(0.25), "2": pytest.approx((5 / 6) / 2), "4": 1.0}
    assert s["prompts_at_k"] == {"1": 2, "2": 2, "4": 1}
    assert s["n_prompts"] == 2 and s["situation_I_share"] == 0.5
    assert s["pass_at_k_interval"]["low"]["1"] <= s["pass_at_k"]["1"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"group_ids": ["a", "a"], "rewards": [1.0]}, "2 group ids but 1 rewards"),
        ({"group_ids": [], "rewards": []}, "no rollouts"),
        ({"group_ids": ["a", "a", "b"], "rewards": [1, 0, 1]}, "group 'b' \\(row 2\\) has 1"),
        ({"group_ids": ["a", None], "rewards": [1, 0]}, "row 1 is missing"),
        ({"group_ids": ["a", "a"], "rewards": [1, float("nan")]}, "row 1 is not finite"),
        ({"group_ids": ["a", "a"], "rewards": ["x", "y"]}, "rewards must be numbers"),
        ({"group_ids": ["a", "a"], "rewards": [1, 0], "ks": [3]}, "every k exceeds"),
        ({"group_ids": ["a", "a"], "rewards": [1, 0], "ks": [0]}, "integer >= 1"),
    ],
)
def test_bad_input_is_one_clear_line(kwargs, message):
    with pytest.raises(ValueError, match=message) as err:
        dg.diagnose(**kwargs)
    assert "\n" not in str(err.value)


def test_trend_refuses_real_rewards_without_threshold():
    with pytest.raises(ValueError, match="threshold"):
        dg.trend([0, 0], ["a", "a"], [0.3, 0.5], k=2)


def test_default_ks():
    assert dg.default_ks(1) == [1]
    assert dg.default_ks(8) == [1, 2, 4, 8]
    assert dg.default_ks(12) == [1, 2, 4, 8, 12]


# ---- `python -m passk_companion diagnose` on tables (CSV, JSONL; the verl and TRL logs are read in
# tests/integrations, where those libraries write them) -------------------------------------


def rollout_table(seed=0, steps=(0, 10), prompts=12, n=6):
    rng = np.random.default_rng(seed)
    rows = []
    for step in steps:
        for p in range(prompts):
            q = rng.random()
            rows += [
                (step, f"p{p}", float(rng.random() < q), str(rng.choice(["x", "y"])))
                for _ in range(n)
            ]
    return pd.DataFrame(rows, columns=["step", "prompt_id", "reward", "answer"])


def run_cli(*argv):
    from passk_companion import cli

    return cli.main(["diagnose", *map(str, argv)])


def brute_curve(frame, by, k):
    groups = [g["reward"].tolist() for _, g in frame.groupby(by, sort=False)]
    return np.mean([brute_max_at_k(g, k) for g in groups if len(g) >= k])


@pytest.mark.parametrize("suffix", ["csv", "jsonl"])
def test_diagnose_a_table_as_json(tmp_path, capsys, suffix):
    frame = rollout_table()
    path = tmp_path / f"rollouts.{suffix}"
    if suffix == "csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_json(path, orient="records", lines=True)
    assert run_cli(path, "--format", "json", "--resamples", "200") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_prompts"] == 24 and out["metric"] == "pass@k"  # a prompt per step
    for k in (1, 2, 4, 6):
        assert out["pass_at_k"][str(k)] == pytest.approx(
            brute_curve(frame, ["step", "prompt_id"], k)
        )
        assert out["pass_at_k_interval"]["low"][str(k)] <= out["pass_at_k"][str(k)] + 1e-12
    per_group = frame.groupby(["step", "prompt_id"])["reward"]
    assert out["situation_I_share"] == pytest.approx((per_group.sum() == 0).mean())
    assert out["input"]["columns"] == {
        "prompt": "prompt_id",
        "reward": "reward",
        "step": "step",
        "answer": "answer",
    }
    steps = out["steps"]
    assert steps["steps"] == [0, 10] and steps["k"] == 6
    for i, step in enumerate(steps["steps"]):
        part = frame[frame.step == step]
        assert steps["pass_at_k"][i] == pytest.approx(brute_curve(part, "prompt_id", 6))
        assert steps["pass_at_1"][i] == pytest.approx(brute_curve(part, "prompt_id", 1))


def test_diagnose_prints_the_curve_and_writes_figures(tmp_path, capsys):
    path = tmp_path / "r.csv"
    rollout_table().to_csv(path, index=False)
    assert run_cli(path, "--out", tmp_path / "figs", "--resamples", "100") == 0
    text = capsys.readouterr().out
    assert "unbiased pass@k" in text and "Situation I" in text and "gap at matched J_1" in text
    names = sorted(p.name for p in (tmp_path / "figs").iterdir())
    assert names == [
        "alpha_k.png",
        "gap_at_matched_j1.png",
        "pass_at_k.png",
        "summary.json",
        "trend.png",
    ]
    assert json.loads((tmp_path / "figs" / "summary.json").read_text())["n_prompts"] == 24


def test_diagnose_real_rewards_and_threshold(tmp_path, capsys):
    frame = rollout_table()
    frame["reward"] = frame["reward"] * 0.9 + np.random.default_rng(1).random(len(frame)) * 0.1
    path = tmp_path / "r.csv"
    frame.to_csv(path, index=False)
    assert run_cli(path, "--format", "json", "--resamples", "50") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["metric"] == "max@k" and out["situation_I_share"] is None and "steps" not in out
    assert out["pass_at_k"]["2"] == pytest.approx(brute_curve(frame, ["step", "prompt_id"], 2))
    assert run_cli(path, "--format", "json", "--threshold", "0.5", "--resamples", "50") == 0
    out = json.loads(capsys.readouterr().out)
    binary = frame.assign(reward=(frame.reward >= 0.5).astype(float))
    assert out["metric"] == "pass@k" and "steps" in out
    assert out["pass_at_k"]["4"] == pytest.approx(brute_curve(binary, ["step", "prompt_id"], 4))


def test_bad_input_is_one_line_naming_file_column_and_row(tmp_path, capsys):
    frame = rollout_table()
    bad = frame.astype({"reward": object})
    bad.loc[17, "reward"] = "abc"
    cases = {
        "bad.csv": (bad, "bad.csv: column 'reward', row 18: 'abc' is not a finite number"),
        "missing.csv": (
            frame.assign(reward=frame.reward.where(frame.index != 5)),
            "missing.csv: column 'reward', row 6: missing",
        ),
        "noreward.csv": (frame.drop(columns="reward"), "noreward.csv: no reward column"),
        "single.csv": (
            frame.drop(index=frame.index[(frame.prompt_id == "p3") & (frame.step == 10)][1:]),
            "single.csv: column 'prompt_id', row 91: prompt 'p3' has only 1 sample at step 10",
        ),
    }
    for name, (table, message) in cases.items():
        table.to_csv(tmp_path / name, index=False)
        assert run_cli(tmp_path / name) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err, err
    (tmp_path / "r.csv").write_text("step,prompt_id,reward\n")
    for argv, message in [
        ((tmp_path / "nothing.csv",), "no such file or folder"),
        ((tmp_path / "r.csv",), "r.csv: no rows"),
        ((tmp_path / "bad.csv", "--reward", "score"), "no column 'score' for the reward"),
        ((tmp_path / "bad.csv", "--out", tmp_path / "bad.csv"), "--out"),
        ((tmp_path / "bad.csv", "--k", "two"), "--k must list integers"),
    ]:
        assert run_cli(*argv) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


def test_progress_bar_on_large_files(tmp_path, capsys, monkeypatch):
    from passk_companion.integrations import rollout_logs

    path = tmp_path / "r.csv"
    rollout_table().to_csv(path, index=False)
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    monkeypatch.setattr(rollout_logs, "PROGRESS_BYTES", 1)  # every file counts as large
    assert run_cli(path, "--format", "json", "--resamples", "10") == 0
    assert "r.csv" in capsys.readouterr().err
    assert run_cli(path, "--format", "json", "--resamples", "10", "--quiet") == 0
    assert capsys.readouterr().err == ""


def test_the_bootstrap_of_merged_rows_is_chunked(monkeypatch):
    import tracemalloc

    rng = np.random.default_rng(0)
    table = np.round(rng.random((60_000, 1)), 3)  # about 1000 distinct rows, merged
    whole = dg.bootstrap_means(table, resamples=400, seed=3)
    monkeypatch.setattr(dg, "_BOOT_ELEMENTS", 1 << 12)
    tracemalloc.start()
    chunked = dg.bootstrap_means(table, resamples=400, seed=3)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    np.testing.assert_array_equal(chunked, whole)  # the same draws, in pieces
    assert peak < 8 * 400 * 1000  # less than one (resamples x distinct rows) float array
