"""`python -m passk_companion diagnose FILE`: the paper's diagnostic on a log of rollouts.

FILE is a table of rollouts, or a folder of them (read in name order, numerically where the
names are numbers), in one of three formats, recognised by their columns:

  * a table (CSV, JSONL or Parquet) with a prompt id and a reward per row, and optionally a step
    and an answer (columns named by --prompt, --reward, --step, --answer, or found among the
    usual names: prompt_id, uid, prompt, ...; reward, score, acc, ...; step, global_step;
    answer, pred);
  * verl's validation (or rollout) dump, `<trainer.validation_data_dir>/<step>.jsonl`, written by
    `PPOTrainer._write_generations` (verl 0.9.1): input, output, gts, score, step, the reward's
    extra fields and `uid`, the TransferQueue key `{uid}_{session}_{index}`. A prompt is the uid
    before the last two fields (else the input text); the reward is `acc` when present (verl's
    core validation variable), else `score`; only the last output of a session counts;
  * TRL's completions log, `<output_dir>/completions/completions_<step>.parquet` (GRPOTrainer with
    log_completions=True, trl 1.16.0): step, prompt, completion, one column per reward function,
    advantage. A prompt is the prompt text within a step; the reward is the only reward column
    (or --reward when there are several; TRL does not log its reward_weights).

Output: the pass@k curve (max@k for real rewards) with a percentile bootstrap interval over
prompts, the share of prompts in Situation I (no correct sample) and all correct, the
distribution of alpha_k at each prompt's J_1 and the gap pass@k - pass@1
(`passk_companion.integrations.diagnostics`). With two or more steps: the trend of pass@1, pass@k
and the gap, and the gap at matched J_1 across steps. `--format json` prints the same numbers as one
JSON object (`pass_at_k`, `situation_I_share`, `n_prompts`, ...); `--out DIR` also writes the
figures and summary.json there. Bad input gets one line naming the file, the column and the row
(rows are counted from 1, the header not included); files of 16 MB or more show a progress bar.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from passk_companion.files import atomic_write, atomic_write_text, writable_dir
from passk_companion.integrations import diagnostics

__all__ = ["Rollouts", "add_arguments", "load", "report", "main", "final_outputs"]

SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
PROMPT_NAMES = ("prompt_id", "uid", "prompt", "index", "question_id", "problem_id", "input")
REWARD_NAMES = ("reward", "score", "acc", "correct", "accuracy")
STEP_NAMES = ("step", "global_step", "iteration")
ANSWER_NAMES = ("answer", "pred", "prediction", "extracted_answer")
VERL = {"input", "output", "score", "step"}
TRL = {"step", "prompt", "completion", "advantage"}
TRL_NOT_REWARDS = {"step", "prompt", "completion", "advantage", "image", "images"}
PROGRESS_BYTES = 16 << 20
CHUNK_ROWS = 200_000
MAX_ROWS = 20_000_000  # rollouts read in all (a 10^7-row file runs in about 1 GB)
MAX_RESAMPLES = 100_000
WRITTEN = {"summary.json"}  # what `diagnose --out` writes: never read back as a log
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # all but tab and newline


@dataclass
class Rollouts:
    """The rollouts of one log: per row the prompt id, reward, step (or None) and answer (or
    None), and where each row came from (file index, row in that file, from 1)."""

    prompt: np.ndarray
    reward: np.ndarray
    step: np.ndarray | None
    answer: np.ndarray | None
    files: list[Path]
    file_of_row: np.ndarray
    row_in_file: np.ndarray
    kind: str
    columns: dict[str, str | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def where(self, row: int, role: str) -> str:
        """`file: column 'c', row r` of one rollout, for an error message."""
        file = self.files[self.file_of_row[row]]
        return f"{file}: column {self.columns[role]!r}, row {self.row_in_file[row]}"


def _files(path: Path) -> list[Path]:
    if not path.exists():
        raise ValueError(f"{path}: no such file or folder")
    if path.is_file():
        if path.suffix.lower() not in SUFFIXES:
            raise ValueError(
                f"{path}: not a CSV, JSONL or Parquet file ({path.suffix or 'no suffix'})"
            )
        return [path]
    folder = path / "completions" if (path / "completions").is_dir() else path
    found = [
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in SUFFIXES and p.name not in WRITTEN
    ]
    if not found:
        raise ValueError(f"{path}: no CSV, JSONL or Parquet files in this folder")

    def key(p: Path) -> tuple:
        digits = re.findall(r"\d+", p.stem)
        return (int(digits[-1]) if digits else math.inf, p.name)

    return sorted(found, key=key)


def _header(path: Path) -> list[str]:
    kind = SUFFIXES[path.suffix.lower()]
    try:
        if kind == "csv":
            with path.open(encoding="utf-8-sig", newline="") as f:
                names = next(csv.reader(f), [])
            repeated = sorted({c for c in names if names.count(c) > 1})
            if repeated:
                raise ValueError(f"{path}: column {repeated[0]!r} is named more than once")
            return list(pd.read_csv(path, nrows=0).columns)
        if kind == "parquet":
            import pyarrow.parquet as pq

            return list(pq.ParquetFile(path).schema_arrow.names)
        with path.open("rb") as f:
            first = f.readline()
        if not first.strip():
            raise ValueError(f"{path}: the file is empty")
        record = json.loads(first.decode("utf-8-sig") if first[:3] == b"\xef\xbb\xbf" else first)
    except RecursionError:
        raise ValueError(f"{path}: row 1 is nested too deeply to be a rollout") from None
    except ImportError as err:
        raise ValueError(f"{path}: reading Parquet needs pyarrow ({err})") from None
    except (ValueError, OSError) as err:
        if isinstance(err, ValueError) and str(err).startswith(str(path)):
            raise
        raise ValueError(f"{path}: cannot read it as {kind} ({err})") from None
    if not isinstance(record, dict):
        raise ValueError(f"{path}: row 1 is not a JSON object")
    return list(record)


def _progress(path: Path, quiet: bool):
    """A progress bar over the bytes of a file of PROGRESS_BYTES or more, on stderr (off with
    --quiet or TQDM_DISABLE=1)."""
    from tqdm.auto import tqdm

    size = path.stat().st_size
    off = os.environ.get("TQDM_DISABLE", "").lower() not in ("", "0", "false")
    return tqdm(
        total=size,
        unit="B",
        unit_scale=True,
        desc=path.name,
        disable=quiet or off or size < PROGRESS_BYTES,
        leave=False,
        file=sys.stderr,
    )


def _read(
    path: Path, columns: list[str], quiet: bool, text: tuple[str, ...] = (), budget: int = MAX_ROWS
) -> pd.DataFrame:
    """The named columns of one file, in chunks (with a progress bar on large files); the
    `text` columns of a CSV are read as text (ids such as ``007`` and ``7`` stay distinct). At
    most `budget` rows: a longer file is refused before it is read (Parquet declares its rows) or
    as soon as the limit is passed."""
    kind = SUFFIXES[path.suffix.lower()]
    parts: list[pd.DataFrame] = []
    too_many = (
        f"{path}: more than {budget} rollouts (the limit of {MAX_ROWS} in all); "
        "diagnose a part of the log"
    )
    with _progress(path, quiet) as bar:
        try:
            if kind == "parquet":
                import pyarrow.parquet as pq

                pf = pq.ParquetFile(path)
                if pf.metadata.num_rows > budget:
                    raise ValueError(too_many)
                per_row = path.stat().st_size / max(1, pf.metadata.num_rows)
                for batch in pf.iter_batches(batch_size=CHUNK_ROWS, columns=columns):
                    parts.append(batch.to_pandas())
                    bar.update(int(batch.num_rows * per_row))
            else:
                with path.open("rb") as f:
                    if f.read(3) != b"\xef\xbb\xbf":  # a UTF-8 byte-order mark is skipped
                        f.seek(0)
                    if kind == "csv":
                        dtype = {c: str for c in text if c in columns}
                        reader = pd.read_csv(
                            f, usecols=columns, chunksize=CHUNK_ROWS, dtype=dtype or None
                        )
                    else:
                        reader = pd.read_json(f, lines=True, chunksize=CHUNK_ROWS, dtype=False)
                    last = 0
                    for chunk in reader:
                        missing = [c for c in columns if c not in chunk.columns]
                        if missing:
                            row = len(pd.concat(parts)) + 1 if parts else 1
                            raise ValueError(
                                f"{path}: column {missing[0]!r}, row {row}: missing from the record"
                            )
                        parts.append(chunk[columns])
                        if sum(map(len, parts)) > budget:
                            raise ValueError(too_many)
                        bar.update(f.tell() - last)
                        last = f.tell()
        except ValueError as err:
            if str(err).startswith(str(path)):
                raise
            raise ValueError(f"{path}: cannot read it as {kind} ({err})") from None
        except RecursionError:
            raise ValueError(f"{path}: a row is nested too deeply to be a rollout") from None
        except MemoryError:
            raise ValueError(f"{path}: not enough memory to read it; diagnose a part") from None
    if not parts:
        return pd.DataFrame(columns=columns)
    return pd.concat(parts, ignore_index=True)


def _pick(columns: list[str], given: str | None, names: tuple[str, ...], role: str, path: Path):
    if given is not None:
        if given not in columns:
            raise ValueError(
                f"{path}: no column {given!r} for the {role} (columns: {', '.join(columns)})"
            )
        return given
    lower = {c.lower(): c for c in columns}
    return next((lower[n] for n in names if n in lower), None)


def _layout(columns: list[str], path: Path, args: argparse.Namespace) -> tuple[str, dict]:
    """The format of a file and the columns that hold each role."""
    cols = set(columns)
    fmt = args.input_format
    if fmt == "auto":
        fmt = "verl" if VERL <= cols else "trl" if TRL <= cols else "table"
    if fmt == "verl":
        if not VERL <= cols:
            raise ValueError(f"{path}: not a verl dump (needs columns {', '.join(sorted(VERL))})")
        prompt = args.prompt or ("uid" if "uid" in cols else "input")
        reward = args.reward or ("acc" if "acc" in cols else "score")
        roles = {"prompt": prompt, "reward": reward, "step": args.step or "step"}
        roles["answer"] = args.answer or ("pred" if "pred" in cols else None)
    elif fmt == "trl":
        if not TRL <= cols:
            raise ValueError(f"{path}: not a TRL completions log (needs {', '.join(sorted(TRL))})")
        reward = args.reward
        if reward is None:
            candidates = [c for c in columns if c not in TRL_NOT_REWARDS]
            if len(candidates) != 1:
                raise ValueError(
                    f"{path}: {len(candidates)} reward columns ({', '.join(candidates) or 'none'})"
                    "; name the one to use with --reward COLUMN"
                )
            reward = candidates[0]
        roles = {"prompt": args.prompt or "prompt", "reward": reward, "step": args.step or "step"}
        roles["answer"] = args.answer
    else:
        roles = {
            "prompt": _pick(columns, args.prompt, PROMPT_NAMES, "prompt id", path),
            "reward": _pick(columns, args.reward, REWARD_NAMES, "reward", path),
            "step": _pick(columns, args.step, STEP_NAMES, "step", path),
            "answer": _pick(columns, args.answer, ANSWER_NAMES, "answer", path),
        }
        for role, flag, names in (
            ("prompt", "--prompt", PROMPT_NAMES),
            ("reward", "--reward", REWARD_NAMES),
        ):
            if roles[role] is None:
                raise ValueError(
                    f"{path}: no {role} column (looked for {', '.join(names)}; columns: "
                    f"{', '.join(columns)}); name it with {flag} COLUMN"
                )
    for role, col in roles.items():
        if col is not None and col not in cols:
            raise ValueError(f"{path}: no column {col!r} for the {role}")
    return fmt, roles


def _verl_keys(frame: pd.DataFrame, rows: np.ndarray, path: Path, notes: list[str]):
    """verl's TransferQueue keys `{uid}_{session}_{index}` made into prompts: the last output
    of each `{uid}_{session}` pair kept, the uid before the last two fields; what was dropped
    and merged is written into `notes`."""
    keep = final_outputs(frame["uid"])
    raw = frame["uid"].astype(str)
    if keep.all() and not _are_keys(raw):
        return frame, rows
    prompts = raw.str.rsplit("_", n=2).str[0]
    dropped = int((~keep).sum())
    if dropped:
        notes.append(
            f"{path.name}: {dropped} of {len(frame)} rows dropped: not the last output of their "
            "session (uids read as verl keys {uid}_{session}_{index})"
        )
    before, after = raw[keep].nunique(), prompts[keep].nunique()
    if after < before:
        notes.append(
            f"{path.name}: {before} uids read as {after} prompts (the uid before its last two "
            "'_' fields); use --prompt input if the uids are not verl's keys"
        )
    frame = frame[keep].assign(uid=prompts[keep])
    return frame, rows[keep]


def _are_keys(values: pd.Series) -> bool:
    parts = values.str.rsplit("_", n=2, expand=True)
    return bool(
        parts.shape[1] >= 3 and not parts.isna().any().any() and parts[2].str.isdigit().all()
    )


def final_outputs(keys: Any) -> np.ndarray:
    """For verl's TransferQueue keys `{uid}_{session}_{index}`: the rows that are the last output
    of their session (an agent loop may emit several outputs per session; all rows are kept
    when the keys have another form)."""
    parts = pd.Series(np.asarray(keys, dtype=object)).astype(str).str.rsplit("_", n=2, expand=True)
    if parts.shape[1] < 3 or parts.isna().any().any() or not parts[2].str.isdigit().all():
        return np.ones(len(parts), dtype=bool)
    index = parts[2].astype(np.int64)
    return (index == index.groupby([parts[0], parts[1]]).transform("max")).to_numpy()


def _numbers(values: pd.Series, path: Path, column: str, rows: np.ndarray) -> np.ndarray:
    if values.dtype == bool:
        return values.to_numpy(dtype=np.float64)
    try:
        parsed = pd.to_numeric(values, errors="coerce")
    except (OverflowError, ValueError):
        parsed = pd.Series([_float(v) for v in values], index=values.index, dtype=np.float64)
    bad = parsed.isna().to_numpy() | ~np.isfinite(parsed.to_numpy(dtype=np.float64))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raw = values.iloc[i]
        what = (
            "missing"
            if raw is None or (isinstance(raw, float) and math.isnan(raw))
            else (f"{raw!r} is not a finite number")
        )
        raise ValueError(f"{path}: column {column!r}, row {rows[i]}: {what}")
    return parsed.to_numpy(dtype=np.float64)


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        return math.nan


def _ids(values: pd.Series) -> np.ndarray:
    """Prompt ids as text: ``1`` and ``1.0`` (or ``7`` and ``007``) are different prompts."""
    if pd.api.types.infer_dtype(values, skipna=False) == "string":  # a CSV's ids: no copy
        return values.to_numpy(dtype=object)
    arr = _labels(values)
    return np.array([v if isinstance(v, str) else str(v) for v in arr.tolist()], dtype=object)


def _labels(values: pd.Series) -> np.ndarray:
    """Hashable labels: text as is, lists and dicts (chat prompts) as their JSON."""
    arr = values.to_numpy(dtype=object)
    if pd.api.types.infer_dtype(values, skipna=True) == "mixed":  # lists or dicts among them
        nested = np.fromiter((isinstance(v, list | dict | np.ndarray) for v in arr), bool, arr.size)
        arr = arr.copy()
        arr[nested] = [json.dumps(_plain(v), sort_keys=True) for v in arr[nested]]
    return arr


def _plain(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return [_plain(x) for x in v.tolist()]
    if isinstance(v, list):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    return v


def load(path: str | Path, args: argparse.Namespace) -> Rollouts:
    """Read FILE (a file or a folder) into Rollouts; ValueError naming file, column and row."""
    files = _files(Path(path))
    prompts, rewards, steps, answers, file_idx, rows, outputs = [], [], [], [], [], [], []
    kinds, roles, notes = set(), {}, []
    read = 0
    for f_i, f in enumerate(files):
        columns = _header(f)
        kind, roles = _layout(columns, f, args)
        kinds.add(kind)
        needed = {c for c in roles.values() if c is not None}
        if kind == "trl" and "completion" in columns:
            needed.add("completion")
        needed = sorted(needed)
        text = tuple(c for c in (roles["prompt"], roles.get("answer")) if c)
        frame = _read(f, needed, args.quiet, text, MAX_ROWS - read)
        read += len(frame)
        if frame.empty:
            raise ValueError(f"{f}: no rows")
        row_numbers = np.arange(1, len(frame) + 1)
        if kind == "verl" and roles["prompt"] == "uid":
            frame, row_numbers = _verl_keys(frame, row_numbers, f, notes)
        for col in needed:
            missing = frame[col].isna().to_numpy()
            if missing.any() and col != roles.get("answer"):
                i = int(np.flatnonzero(missing)[0])
                raise ValueError(f"{f}: column {col!r}, row {row_numbers[i]}: missing value")
        reward = _numbers(frame[roles["reward"]], f, roles["reward"], row_numbers)
        prompts.append(_ids(frame[roles["prompt"]]))
        rewards.append(reward)
        if roles.get("step"):
            step = frame[roles["step"]].to_numpy()
            numeric = np.array([isinstance(v, int | float | np.number) for v in step.tolist()])
            if numeric.any():
                values = np.array(
                    [_float(v) if n else 0.0 for v, n in zip(step, numeric, strict=True)]
                )
                bad = numeric & ~np.isfinite(values)
                if bad.any():
                    i = int(np.flatnonzero(bad)[0])
                    raise ValueError(
                        f"{f}: column {roles['step']!r}, row {row_numbers[i]}: {step[i]!r} is not "
                        "a finite step"
                    )
            steps.append(step)
        if "completion" in frame.columns:
            outputs.append(_labels(frame["completion"].astype(str)))
        if roles.get("answer"):
            answers.append(_labels(frame[roles["answer"]].fillna("")))
        file_idx.append(np.full(len(frame), f_i))
        rows.append(row_numbers)
    if len(kinds) > 1:
        raise ValueError(f"{path}: the files mix formats ({', '.join(sorted(kinds))})")
    step = np.concatenate(steps) if len(steps) == len(files) and steps else None
    answer = np.concatenate(answers) if len(answers) == len(files) and answers else None
    data = Rollouts(
        prompt=np.concatenate(prompts),
        reward=np.concatenate(rewards),
        step=step,
        answer=answer,
        files=files,
        file_of_row=np.concatenate(file_idx),
        row_in_file=np.concatenate(rows),
        kind=kinds.pop(),
        columns=roles,
        notes=notes,
    )
    if data.kind == "trl" and step is not None and len(outputs) == len(files):
        data = _generation_batches_once(data, np.concatenate(outputs))
    return data


def _subset(data: Rollouts, keep: np.ndarray) -> Rollouts:
    def pick(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else a[keep]

    return Rollouts(
        prompt=data.prompt[keep],
        reward=data.reward[keep],
        step=pick(data.step),
        answer=pick(data.answer),
        files=data.files,
        file_of_row=data.file_of_row[keep],
        row_in_file=data.row_in_file[keep],
        kind=data.kind,
        columns=data.columns,
        notes=data.notes,
    )


def _generation_batches_once(data: Rollouts, completions: np.ndarray) -> Rollouts:
    """TRL logs one generation batch at every step that trains on it (num_iterations > 1, or
    steps_per_generation > gradient_accumulation_steps): a step whose rows (prompt, completion,
    reward) are those of the step logged before it is the same batch again, and is dropped; the
    notes say which steps were merged."""
    codes, labels = diagnostics.group_codes(data.step, "step")
    keep = np.ones(codes.size, dtype=bool)
    previous, merged = None, []
    for s in range(labels.size):
        rows = np.flatnonzero(codes == s)
        batch = sorted(
            zip(data.prompt[rows].tolist(), completions[rows].tolist(), data.reward[rows].tolist(),
                strict=True)
        )  # fmt: skip
        if batch == previous:
            keep[rows] = False
            merged.append(str(labels[s]))
        else:
            previous = batch
    if not merged:
        return data
    data.notes.append(
        f"steps {', '.join(merged)} logged the generation batch of the step before them again "
        "(TRL's num_iterations or steps_per_generation): each batch counted once"
    )
    return _subset(data, keep)


def _group_ids(data: Rollouts) -> np.ndarray:
    """Prompt ids, made per step when there is a step column (a group is a (step, prompt))."""
    if data.step is None:
        return data.prompt
    step_codes, _ = diagnostics.group_codes(data.step, "step")
    prompt_codes, _ = diagnostics.group_codes(data.prompt, "prompt")
    return step_codes * (int(prompt_codes.max()) + 1) + prompt_codes


def report(data: Rollouts, args: argparse.Namespace) -> dict[str, Any]:
    """The diagnostic of the rollouts as a JSON-ready dict (and the objects for the figures)."""
    ids = _group_ids(data)
    codes, _ = diagnostics.group_codes(ids)
    sizes = np.bincount(codes)
    if sizes.min() < 2:
        g = int(np.argmin(sizes))
        row = int(np.flatnonzero(codes == g)[0])
        raise ValueError(
            f"{data.where(row, 'prompt')}: prompt {_short(data.prompt[row])} has only 1 sample"
            + (f" at step {data.step[row]}" if data.step is not None else "")
            + "; pass@k needs n >= 2 samples per prompt"
        )
    ks = _parse_ks(args.k)
    diag = diagnostics.diagnose(ids, data.reward, ks, answers=data.answer, threshold=args.threshold)
    summary = diag.summary(resamples=args.resamples, confidence=args.confidence, seed=args.seed)
    summary["input"] = {
        "path": str(args.file),
        "format": data.kind,
        "files": len(data.files),
        "columns": data.columns,
        "notes": list(data.notes),
    }
    out: dict[str, Any] = {"summary": summary, "diag": diag, "trend": None}
    n_steps = 0 if data.step is None else diagnostics.group_codes(data.step, "step")[1].size
    if n_steps >= 2:
        k = int(max([q for q in diag.ks if q <= sizes.min()] or [sizes.min()]))
        if k >= 2 and (diag.binary or args.threshold is not None):
            tr = diagnostics.trend(data.step, data.prompt, data.reward, k, threshold=args.threshold)
            summary["steps"] = tr.summary()
            out["trend"] = tr
    return out


def _short(label: Any, width: int = 60) -> str:
    text = repr(label)
    return text if len(text) <= width else text[: width - 3] + "..."


def _parse_ks(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        ks = [int(t) for t in re.split(r"[,\s]+", text.strip()) if t]
    except ValueError:
        raise ValueError(f"--k must list integers such as 1,2,4,8, got {text!r}") from None
    if not ks:
        raise ValueError("--k lists no k")
    return ks


def _fmt(x: float | None, digits: int = 4) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def text(result: dict[str, Any]) -> str:
    """The terminal report."""
    s = result["summary"]
    inp = s["input"]
    cols = ", ".join(f"{role} {col!r}" for role, col in inp["columns"].items() if col)
    lines = [
        f"{inp['path']}: {inp['format']} ({inp['files']} file(s)); columns: {cols}",
        f"{s['n_prompts']} prompts, {s['n_rollouts']} rollouts, "
        f"n = {s['n_per_prompt']['min']}..{s['n_per_prompt']['max']} per prompt"
        + (" (a prompt at each step counts once per step)" if "steps" in s else ""),
    ]
    metric = s["metric"]
    if metric == "pass@k":
        note = "0/1 rewards" if s["threshold"] is None else f"correct = reward >= {s['threshold']}"
        lines.append(f"{note}: unbiased pass@k, 1 - C(n-c, k)/C(n, k) (Chen et al. 2021)")
    else:
        lines.append("real-valued rewards: unbiased max@k (mean max over k-subsets); --threshold T")
        lines.append("  for pass@k, Situation I and alpha_k")
    conf = int(round(100 * s["pass_at_k_interval"]["confidence"]))
    lines.append(f"  {'k':>5}  {metric:>8}  {conf}% interval (bootstrap over prompts)  prompts")
    for k, v in s["pass_at_k"].items():
        lo, hi = s["pass_at_k_interval"]["low"][k], s["pass_at_k_interval"]["high"][k]
        lines.append(
            f"  {k:>5}  {_fmt(v):>8}  [{_fmt(lo)}, {_fmt(hi)}]{'':>20}{s['prompts_at_k'][k]:>7}"
        )
    if s["situation_I_share"] is not None:
        lines.append(
            f"Situation I (no correct sample, zero signal): {100 * s['situation_I_share']:.1f}% of "
            f"prompts; all correct: {100 * s['all_right_share']:.1f}%"
        )
    k_last = list(s["pass_at_k"])[-1]
    if s["alpha_k_quantiles"] is not None and k_last != "1":
        q = s["alpha_k_quantiles"][k_last]
        lines.append(
            f"alpha_{k_last} = k (1 - J_1)^(k-1) at each prompt's J_1 (Theorem 3.1): "
            + ", ".join(f"{int(float(p) * 100)}% {_fmt(v, 3)}" for p, v in q.items())
        )
    if k_last != "1":
        lines.append(f"gap {metric.replace('k', k_last)} - pass@1: {_fmt(s['gap'][k_last])}")
    if s["distinct_correct_mean"] is not None:
        lines.append(f"distinct correct answers per prompt: {s['distinct_correct_mean']:.3f}")
    if "steps" in s:
        st = s["steps"]
        k = st["k"]
        lines.append(f"by step (k = {k}):")
        lines.append(f"  {'step':>8}  {'pass@1':>8}  {f'pass@{k}':>8}  {'gap':>8}  sit. I  prompts")
        for i, step in enumerate(st["steps"]):
            lines.append(
                f"  {step!s:>8}  {_fmt(st['pass_at_1'][i]):>8}  {_fmt(st['pass_at_k'][i]):>8}  "
                f"{_fmt(st['gap'][i]):>8}  {_fmt(st['situation_I_share'][i], 2):>6}  "
                f"{st['n_prompts'][i]:>7}"
            )
        m = st["matched_j1"]
        lines.append(
            f"gap at matched J_1: mean per-prompt pass@{k} - pass@1 in bins of the prompt's J_1"
        )
        lines.append("  (0 < J_1 < 1); flat rows: the fall of the gap is J_1 rising (Theorem 3.2)")
        lines.append("  " + f"{'J_1 bin':>12}" + "".join(f"{s_!s:>9}" for s_ in st["steps"]))
        for b in range(len(m["bins"]) - 1):
            label = f"[{m['bins'][b]:.1f}, {m['bins'][b + 1]:.1f})"
            lines.append("  " + f"{label:>12}" + "".join(f"{_fmt(v, 3):>9}" for v in m["gap"][b]))
    lines += [f"note: {note}" for note in s["input"].get("notes", [])]
    return "\n".join(lines)


def printable(text: str) -> str:
    """`text` with control characters (escape sequences of a log's strings) shown as \\xNN."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _finite(x: Any) -> Any:
    """A JSON-ready value with every non-finite number as null (JSON has no Infinity)."""
    if isinstance(x, dict):
        return {str(k): _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def as_json(summary: dict[str, Any]) -> str:
    """The summary as strict JSON (non-finite numbers as null)."""
    return json.dumps(_finite(summary), indent=1, default=_json, allow_nan=False)


def figures(result: dict[str, Any], folder: Path) -> list[Path]:
    """The curve with its interval, the distribution of alpha_k, and with steps the trend and
    the gap at matched J_1, as PNG files in `folder` (and summary.json)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from passk_companion.evidence.plots import style

    style()
    s, diag, tr = result["summary"], result["diag"], result["trend"]
    written = []

    def save(fig, name: str) -> None:
        path = folder / f"{name}.png"
        atomic_write(path, lambda f: fig.savefig(f, format="png", bbox_inches="tight"))
        plt.close(fig)
        written.append(path)

    ks = [int(k) for k in s["pass_at_k"]]
    fig, ax = plt.subplots()
    curve = [s["pass_at_k"][str(k)] for k in ks]
    low = [s["pass_at_k_interval"]["low"][str(k)] for k in ks]
    high = [s["pass_at_k_interval"]["high"][str(k)] for k in ks]
    ax.plot(ks, curve, marker="o", label=f"mean over {s['n_prompts']} prompts")
    ax.fill_between(ks, low, high, alpha=0.3, label="bootstrap interval over prompts")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k")
    ax.set_ylabel(s["metric"])
    if s["situation_I_share"] is not None:
        ax.set_title(f"Situation I (no correct sample): {100 * s['situation_I_share']:.1f}%")
    ax.legend()
    save(fig, "pass_at_k")
    if diag.alpha is not None and ks[-1] > 1:
        j = int(np.flatnonzero(diag.ks == ks[-1])[0])
        fig, ax = plt.subplots()
        ax.hist(diag.alpha[:, j], bins=30)
        ax.set_xlabel(f"alpha_{ks[-1]} = k (1 - J_1)^(k-1) at the prompt's J_1")
        ax.set_ylabel("prompts")
        save(fig, "alpha_k")
    if tr is not None:
        x = np.arange(len(tr.steps))
        fig, ax = plt.subplots()
        ax.plot(x, tr.j1, marker="o", label="pass@1")
        ax.plot(x, tr.pass_at_k, marker="o", label=f"pass@{tr.k}")
        ax.plot(x, tr.gap, marker="o", label="gap")
        ax.set_xticks(x, [str(v) for v in tr.steps])
        ax.set_xlabel("step")
        ax.set_ylabel("mean over prompts")
        ax.legend()
        save(fig, "trend")
        fig, ax = plt.subplots()
        for b in range(tr.matched_gap.shape[0]):
            if np.isfinite(tr.matched_gap[b]).any():
                label = f"J_1 in [{tr.bins[b]:.1f}, {tr.bins[b + 1]:.1f})"
                ax.plot(x, tr.matched_gap[b], marker="o", label=label)
        ax.set_xticks(x, [str(v) for v in tr.steps])
        ax.set_xlabel("step")
        ax.set_ylabel(f"mean pass@{tr.k} - pass@1 at matched J_1")
        ax.legend()
        save(fig, "gap_at_matched_j1")
    written.append(atomic_write_text(folder / "summary.json", as_json(s) + "\n"))
    return written


def _json(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    return str(x)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `diagnose` (cli.py adds the subcommand and calls `main`)."""
    p.add_argument("file", help="a rollout table, a verl validation dump or a TRL completions log")
    p.add_argument("--format", choices=("text", "json"), default="text", dest="output")
    p.add_argument("--out", default=None, help="also write the figures and summary.json here")
    p.add_argument(
        "--input-format", choices=("auto", "table", "verl", "trl"), default="auto", help="of FILE"
    )
    p.add_argument("--prompt", default=None, help="column of the prompt id")
    p.add_argument("--reward", default=None, help="column of the reward")
    p.add_argument("--step", default=None, help="column of the training step")
    p.add_argument("--answer", default=None, help="column of the final answer")
    p.add_argument("--k", default=None, help="k values, e.g. 1,2,4,8 (default 1, 2, 4, ..., n)")
    p.add_argument("--threshold", type=float, default=None, help="correct = reward >= T")
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples")
    p.add_argument("--confidence", type=float, default=0.95)
    p.add_argument("--seed", type=int, default=0, help="of the bootstrap")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    """Run `diagnose`; ValueError (one line, control characters escaped) for bad input, which
    cli.main prints. Ctrl-C is one line and rc 130; a closed pipe (`| head`) ends quietly."""
    try:
        return _main(args)
    except ValueError as err:
        raise ValueError(printable(" ".join(str(err).split()))) from None
    except MemoryError:
        raise ValueError(f"{args.file}: not enough memory; diagnose a part of the log") from None
    except KeyboardInterrupt:
        print("error: diagnose was interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # nothing more reaches the closed pipe
        return 0


def _main(args: argparse.Namespace) -> int:
    if not 1 <= args.resamples <= MAX_RESAMPLES:
        raise ValueError(f"--resamples must lie in 1..{MAX_RESAMPLES}, got {args.resamples}")
    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    if not 0 < args.confidence < 1:
        raise ValueError(f"--confidence must lie in (0, 1), got {args.confidence}")
    if args.threshold is not None and not math.isfinite(args.threshold):
        raise ValueError(f"--threshold must be a finite number, got {args.threshold}")
    _parse_ks(args.k)  # every option is checked before the file is read
    folder = writable_dir(args.out, "--out") if args.out is not None else None
    data = load(args.file, args)
    result = report(data, args)
    if folder is not None:
        figures(result, folder)
    if args.output == "json":
        print(as_json(result["summary"]), flush=True)
    else:
        print(printable(text(result)), flush=True)
        if folder is not None:
            print(printable(f"figures and summary.json: {folder}"), flush=True)
    return 0
