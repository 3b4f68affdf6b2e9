"""`passk-companion diagnose` on users' logs: ids are text, a TRL generation batch counts once,
verl's key reading is reported, control characters never reach the terminal, JSON is strict, and
bad or oversized input is one line."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from passk_companion import cli
from passk_companion.integrations import rollout_logs


def run(capsys, *argv):
    rc = cli.main(["diagnose", *map(str, argv)])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize(("a", "b"), [("007", "7"), ("1", "1.0")])
def test_prompt_ids_that_parse_as_the_same_number_stay_apart(tmp_path, capsys, a, b):
    path = tmp_path / "ids.csv"
    path.write_text(f"prompt_id,reward\n{a},1\n{a},1\n{b},0\n{b},0\n")
    rc, out, _ = run(capsys, path, "--format", "json", "--resamples", "50")
    summary = json.loads(out)
    assert rc == 0 and summary["n_prompts"] == 2
    assert summary["pass_at_k"]["2"] == 0.5 and summary["situation_I_share"] == 0.5


def _trl_rows(step, batch):
    return [f"{step},{p},{c},0.0,{r}" for p, c, r in batch]


def test_a_trl_generation_batch_logged_at_several_steps_counts_once(tmp_path, capsys):
    first = [("p1", "x", 1), ("p1", "y", 0), ("p2", "x", 0), ("p2", "z", 0)]
    second = [("p1", "x", 1), ("p1", "x", 1), ("p2", "y", 1), ("p2", "z", 0)]
    rows = _trl_rows(1, first) + _trl_rows(2, first) + _trl_rows(3, second) + _trl_rows(4, second)
    path = tmp_path / "completions.csv"
    path.write_text("step,prompt,completion,advantage,reward\n" + "\n".join(rows) + "\n")
    rc, out, _ = run(capsys, path, "--format", "json", "--resamples", "50")
    summary = json.loads(out)
    assert rc == 0 and summary["n_prompts"] == 4 and summary["n_rollouts"] == 8
    assert summary["steps"]["steps"] == [1, 3]
    assert any("steps 2, 4 logged the generation batch" in n for n in summary["input"]["notes"])


def test_the_verl_key_reading_is_reported(tmp_path, capsys):
    rows = [
        {"input": f"q{p}", "output": "x", "score": float(p == 12), "step": 1, "uid": u}
        for p, u in ((12, "gsm8k_12_3"), (13, "gsm8k_13_0"))
        for _ in range(8)
    ]
    path = tmp_path / "1.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rc, out, _ = run(capsys, path)
    assert rc == 0 and "note: 1.jsonl: 2 uids read as 1 prompts" in out
    assert "--prompt input" in out
    keys = [{**r, "uid": f"q_0_{i}"} for i, r in enumerate(rows[:8])]
    path.write_text("".join(json.dumps(r) + "\n" for r in keys))
    rc, out, err = run(capsys, path, "--prompt", "uid", "--input-format", "verl")
    assert rc == 2 and "has only 1 sample" in err  # what is left after 7 of 8 rows dropped
    keys = [{**r, "uid": f"q_0_{i % 2}"} for i, r in enumerate(rows[:8])]
    path.write_text("".join(json.dumps(r) + "\n" for r in keys * 2))
    rc, out, _ = run(capsys, path, "--resamples", "20")
    assert rc == 0 and "note: 1.jsonl: 8 of 16 rows dropped" in out


def test_control_characters_from_a_log_never_reach_the_terminal(tmp_path, capsys):
    header = tmp_path / "ansi.csv"
    header.write_text("x\x1b]0;pwned\x07\x1b[2J,y\n1,2\n")
    rc, out, err = run(capsys, header)
    assert rc == 2 and "\x1b" not in err and "\\x1b" in err
    steps = tmp_path / "ansi_step.csv"
    steps.write_text('step,prompt_id,reward\n"\x1b[31mRED",a,1\n"\x1b[31mRED",a,0\n2,a,1\n2,a,1\n')
    rc, out, err = run(capsys, steps, "--resamples", "20")
    assert rc == 0 and "\x1b" not in out and "\\x1b[31mRED" in out


def test_a_non_finite_step_is_refused_and_json_is_strict(tmp_path, capsys):
    path = tmp_path / "step_inf.csv"
    path.write_text("step,prompt_id,reward\n1,a,1\n1,a,0\ninf,a,1\ninf,a,1\n")
    rc, out, err = run(capsys, path, "--format", "json")
    assert rc == 2 and "column 'step', row 3" in err and "not a finite step" in err
    assert rollout_logs.as_json({"x": float("inf"), "y": [float("nan"), 1.0]}) == (
        '{\n "x": null,\n "y": [\n  null,\n  1.0\n ]\n}'
    )


@pytest.mark.parametrize("suffix", ["csv", "jsonl"])
def test_a_byte_order_mark_is_read_as_in_a_csv(tmp_path, capsys, suffix):
    path = tmp_path / f"bom.{suffix}"
    rows = [("a", 1), ("a", 0), ("b", 1), ("b", 1)]
    if suffix == "csv":
        body = "prompt_id,reward\n" + "".join(f"{p},{r}\n" for p, r in rows)
    else:
        body = "".join(json.dumps({"prompt_id": p, "reward": r}) + "\n" for p, r in rows)
    path.write_bytes(b"\xef\xbb\xbf" + body.encode())
    rc, out, err = run(capsys, path, "--format", "json", "--resamples", "20")
    assert rc == 0, err
    assert json.loads(out)["n_prompts"] == 2


def test_diagnose_dir_out_dir_runs_twice(tmp_path, capsys):
    folder = tmp_path / "logs"
    folder.mkdir()
    (folder / "1.csv").write_text("prompt_id,reward\na,1\na,0\nb,1\nb,1\n")
    for _ in range(2):
        rc, _, err = run(capsys, folder, "--out", folder, "--quiet", "--resamples", "20")
        assert rc == 0, err
    assert (folder / "summary.json").is_file()


def test_k_above_some_groups_with_a_step_column_runs(tmp_path, capsys):
    path = tmp_path / "steps.csv"
    rows = "1,a,1\n1,a,0\n1,b,1\n1,b,0\n1,b,1\n1,b,1\n2,a,1\n2,a,1\n2,b,0\n2,b,0\n2,b,1\n2,b,1\n"
    path.write_text("step,prompt_id,reward\n" + rows)
    rc, out, err = run(capsys, path, "--k", "4", "--format", "json", "--resamples", "20")
    assert rc == 0, err
    assert json.loads(out)["pass_at_k"]["4"] is not None


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("deep.jsonl", "[" * 100_000 + "]" * 100_000 + "\n", "nested too deeply"),
        ("bigint.csv", "prompt_id,reward\na,1" + "0" * 400 + "\na,0\nb,1\nb,1\n", "row 1"),
        ("twice.csv", "prompt_id,reward,reward\na,1,0\na,0,1\n", "named more than once"),
    ],
)
def test_hostile_files_are_one_line(tmp_path, capsys, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    rc, _, err = run(capsys, path)
    assert rc == 2 and message in err and err.count("\n") == 1, err


def test_what_is_read_is_bounded_before_it_is_read(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(rollout_logs, "MAX_ROWS", 5)
    path = tmp_path / "big.csv"
    path.write_text("prompt_id,reward\n" + "a,1\n" * 12)
    monkeypatch.setattr(rollout_logs, "CHUNK_ROWS", 4)
    rc, _, err = run(capsys, path)
    assert rc == 2 and "more than 5 rollouts" in err
    rc, _, err = run(capsys, path, "--resamples", "300000000")
    assert rc == 2 and "--resamples must lie in 1..100000" in err
    rc, _, err = run(capsys, path, "--seed", "-1")
    assert rc == 2 and "--seed must be >= 0" in err


def test_a_closed_pipe_ends_quietly(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("prompt_id,reward\n" + "".join(f"p{i},{i % 2}\np{i},1\n" for i in range(50)))
    # `true` exits without reading: every write of diagnose meets a closed pipe
    cmd = f"set -o pipefail; {sys.executable} -m passk_companion diagnose {path} | true"
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, check=False,
                          cwd=Path(__file__).resolve().parents[2])  # fmt: skip
    assert proc.returncode == 0 and "Broken pipe" not in proc.stderr, proc.stderr
