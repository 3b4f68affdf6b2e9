"""RLVR on the tiny GPT: RL from a pretrained base with any registered objective, an optional
token-entropy bonus, an i.i.d. or without-replacement sampler, and AdamW or plain SGD, for an
ensemble of runs trained in lockstep as one batched computation (one run is an ensemble of one).

One RL step of every run of the ensemble (CleanRL-style, every knob in `RLConfig`):
  1. draw `batch_prompts` RL *train* pairs of the run's task;
  2. sample n rollouts per prompt (`sampler`: "iid", or "swor" = stochastic beam search), for
     every run at once;
  3. verify them: rewards r (B, n) in {0, 1};
  4. weights w = objective.weights(r, k, logprobs) (B, n), with the run's own objective and k;
  5. loss = -(w * log pi(rollout)).sum(1).mean() - entropy * mean token entropy, per run, all
     runs' losses backpropagated together; each run's gradient clipped at its own `grad_clip`
     (0: never), then its own optimizer step (AdamW, or SGD without momentum).
A step whose loss or gradient is not finite ends that run with an error naming the step; the
others go on. With `stop_gain`, a run ends at the first evaluation whose test J_1 is that much
above the base's (it has passed the last matched level it is compared at); `steps` is then the
most it may take. A run that ends leaves the ensemble.

Every `eval_every` steps a run's train and test prompts are evaluated exactly
(:mod:`passk_companion.model.evaluation`: J_1, pass@k for any k, expected distinct correct paths,
effective correct modes) and the KL to its base is estimated on the test prompts. Aggregates go to
metrics.csv, per-prompt values to prompts.csv, and a checkpoint (the run's model and optimizer
state, its random generators, tables) is written atomically, so an interrupted run resumes to
exactly the metrics of an uninterrupted one. Checkpoints hold plain data only and are loaded
weights-only (:mod:`passk_companion.model.checkpoint`); a run holds an exclusive lock on its
folder.

Every run of an ensemble writes the same bits as the same run trained alone: the portable kernels
make a row's computation independent of the rows of other runs, every reduction over rows is per
run, every random stream is the run's own (:mod:`passk_companion.model.streams`), and the
optimizer is elementwise (tests/model/test_ensemble.py). Runs packed together share the model and
task shapes (:func:`pack_key`).

:func:`train_ensemble` is the one training loop: :func:`train_rl` and :func:`run_trial` (the CLI's
`train`) are ensembles of one, and a sweep runs :func:`run_pack` on groups of its trials.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from passk_companion import objectives
from passk_companion.files import (
    atomic_write_text,
    exclusive,
    remove_stale_temporaries,
    writable_dir,
)
from passk_companion.model import checkpoint, streams
from passk_companion.model.config import (
    ProfileConfig,
    RLConfig,
    build_model,
    build_task,
    check_fits,
)
from passk_companion.model.evaluation import PathSet, RegimeRule, exact_metrics, kl_to_reference
from passk_companion.model.generate import answer_mask, sample_iid, sample_swor, sequence_logprob
from passk_companion.model.gpt import GPT, pick_device
from passk_companion.model.optim import RunOptimizer
from passk_companion.model.pretrain import load_or_pretrain
from passk_companion.model.provenance import code_digest
from passk_companion.model.tasks import DagTask
from passk_companion.runtime import progress as progress_bar
from passk_companion.theory.passk import alpha_k, pass_at_k

__all__ = [
    "REPORT_KS",
    "SPLITS",
    "RUN_FILES",
    "Run",
    "RunResult",
    "train_ensemble",
    "train_rl",
    "run_key",
    "pack_key",
    "evaluation_steps",
    "load_trained",
    "run_trial",
    "run_pack",
]

REPORT_KS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)  # exact pass@k columns in metrics.csv
SPLITS = ("train", "test")
RUN_FILES = (
    "metrics.csv",
    "prompts.csv",
)  # what a run writes at every evaluation, besides its checkpoint
_MAY_BE_NAN = ("test_hard_j1",)  # NaN when no test prompt is hard for the base
_GENERATOR_BYTES = 2**16  # a random generator's state (5056 bytes on the CPU) fits in this
_PHASES = ("sample", "verify", "weights", "backward")


@dataclass
class Run:
    """One run of an ensemble: its base model (one run), profile (its graph and base), RL
    configuration and output folder."""

    base: GPT
    profile: ProfileConfig
    cfg: RLConfig
    out: Path


@dataclass
class RunResult:
    """What a run of an ensemble ended with: its metrics (one row per evaluation), or the error
    that ended it; its share of the ensemble's step time (timings.json), its wall time, and a
    note for its caller."""

    metrics: pd.DataFrame | None
    error: Exception | None = None
    timings: dict = field(default_factory=dict)
    wall_s: float = math.nan  # from the start of the ensemble to the end of this run
    note: str = ""  # what the run did that its caller should report (a checkpoint not resumed)


def run_key(cfg: RLConfig, threads: int | None = None) -> str:
    """What a resumed run must share with the checkpoint: every RLConfig field except the spelling
    of the device, plus the number of torch CPU threads (which changes float reductions)."""
    fields = dataclasses.asdict(cfg)
    fields.pop("device")
    fields["threads"] = torch.get_num_threads() if threads is None else threads
    return json.dumps(fields, sort_keys=True, default=str)


def pack_key(profile: ProfileConfig, cfg: RLConfig, task: DagTask) -> tuple:
    """What runs trained in one ensemble must share: the model, the task's shapes (vocabulary,
    answer length), the batch (prompts, rollouts, KL samples), the sampler, the temperature and
    the device. Everything else (objective, k, entropy bonus, optimizer, lr, clipping, steps,
    evaluation cadence, stop_gain, seed, graph, base) is each run's own."""
    shapes = (task.vocab_size, task.max_new_tokens)
    batch = (cfg.batch_prompts, cfg.n, cfg.kl_samples, cfg.sampler, cfg.temperature)
    return (dataclasses.astuple(profile.model), shapes, batch, cfg.device)


_RUN_FIELDS = {
    "key": str,
    "model": dict,
    "opt": dict,
    "gen": torch.Tensor,
    "rows": list,
    "prompt_rows": dict,
    "step": int,
}


def _load_run(path: Path, model: GPT, run: tuple[DagTask, RLConfig] | None, remedy: str) -> dict:
    """A run checkpoint for `model` (and the task and config of `run`), its declared sizes
    bounded by what they hold (the model, the optimizer's two moments, the generators, the
    evaluated rows: at most 1 GiB of them without a `run`) before anything is read."""
    total, largest = checkpoint.state_bytes(model)
    rows = 2**30
    if run is not None:
        task, cfg = run
        early = cfg.eval_early_until // cfg.eval_early_every + 1 if cfg.eval_early_every else 0
        evaluations = cfg.steps // cfg.eval_every + 2 + early  # at most
        prompts = len(task.rl_train_pairs) + len(task.rl_test_pairs)
        rows = evaluations * (prompts * 10 + len(REPORT_KS) * 2 + 40) * 32  # pickled numbers
    saved = checkpoint.load(
        path, _RUN_FIELDS, "run checkpoint", remedy,
        max_bytes=3 * total + rows + 2**24, max_tensor_bytes=max(largest, _GENERATOR_BYTES),
    )  # fmt: skip
    if run is not None and not 0 <= saved["step"] <= run[1].steps:
        raise checkpoint.CheckpointError(
            f"{path} is not a usable run checkpoint (step {saved['step']} is outside 0.."
            f"{run[1].steps}); {remedy}"
        )
    return saved


class _Member:
    """A run's state inside an ensemble: its task, objective, random streams, evaluated rows,
    step, and where it writes."""

    def __init__(self, run: Run, fresh: bool, until: int | None, fresh_hint: bool) -> None:
        self.run, self.cfg, self.out = run, run.cfg, run.out
        self.task = build_task(run.profile.task)
        self.regime: RegimeRule = run.profile.regime
        self.obj = objectives.get(self.cfg.objective, **self.cfg.objective_params)
        dev = next(run.base.parameters()).device
        self.gen = streams.generator(streams.rollouts(self.cfg.seed), dev)
        if self.obj.stochastic:
            self.obj.generator = streams.generator(streams.objective(self.cfg.seed))
        self.key = run_key(self.cfg)
        self.rows: list[dict] = []
        self.prompt_rows: dict[str, list] = {}
        self.step = 0
        self.last = self.cfg.steps if until is None else min(until, self.cfg.steps)
        self.acc: list[dict] = []
        self.timings: dict[str, float] = {}
        self.model = _copy(run.base)
        self.opt_state: dict | None = None
        self.paths = {s: PathSet.build(self.task, getattr(self.task, f"rl_{s}_pairs"))
                      for s in SPLITS}  # fmt: skip
        self.hard = torch.zeros(0, dtype=torch.bool)
        self.resumed_at = -1  # the step a resumed run starts from (it is not evaluated again)
        self.note = ""
        ckpt = self.out / "checkpoint.pt"
        if ckpt.exists() and not fresh:
            self._resume(ckpt, fresh_hint)

    def _resume(self, path: Path, fresh_hint: bool) -> None:
        remedy = "delete it, or pass --fresh to start over" if fresh_hint else "delete it"
        saved = _load_run(path, self.model, (self.task, self.cfg), remedy)
        if saved["key"] != self.key:
            raise ValueError(
                f"{path} belongs to another run configuration (objective, sizes, seed or "
                "threads differ); "
                + ("pass --fresh (fresh=True) to start over, or use another --out" if fresh_hint
                   else "delete it, or use another output folder")
            )  # fmt: skip
        what = "run checkpoint"
        if saved.get("code") != code_digest():
            if fresh_hint:
                raise checkpoint.CheckpointError(
                    f"{path} was written by other code (package digest {saved.get('code')!r}, "
                    f"this one {code_digest()!r}); pass --fresh to start over, or use another "
                    "--out"
                )
            self.note = f"its checkpoint was written by other code ({path}): started over"
            return
        checkpoint.restore(self.model, saved["model"], path, what, remedy)
        checkpoint.restore_generator(self.gen, saved["gen"], path, what, remedy)
        if self.obj.stochastic and saved.get("obj_gen") is not None:
            checkpoint.restore_generator(
                self.obj.generator, saved["obj_gen"], path, what, remedy, "obj_gen"
            )
        probe = RunOptimizer(list(self.model.parameters()), [self.cfg.optimizer], [self.cfg.lr])
        try:
            probe.load_run(0, saved["opt"])
        except ValueError as err:
            raise checkpoint.CheckpointError(
                f"{path} is not a {what} of this configuration (optimizer state: {err}); {remedy}"
            ) from None
        self.opt_state = saved["opt"]
        self.rows, self.prompt_rows, self.step = saved["rows"], saved["prompt_rows"], saved["step"]
        self.resumed_at = self.step

    @property
    def due(self) -> bool:
        """Whether this step is an evaluation step of the run (:func:`evaluation_steps`)."""
        return _due(self.cfg, self.step)

    @property
    def finished(self) -> bool:
        """Whether the run ends at this step (its last step, past its stop_gain, or its train
        J_1 at stop_train_j1)."""
        if self.step >= self.last or _reached(self.rows, self.cfg.stop_gain):
            return True
        limit = self.cfg.stop_train_j1
        return limit is not None and bool(self.rows) and self.rows[-1]["train_j1"] >= limit


def _due(cfg: RLConfig, step: int) -> bool:
    every, until = cfg.eval_early_every, cfg.eval_early_until
    early = every > 0 and step <= until and step % every == 0
    return step % cfg.eval_every == 0 or early or step == cfg.steps


def evaluation_steps(cfg: RLConfig) -> list[int]:
    """The steps a run of `cfg` evaluates at (if it runs that far): every eval_every steps, every
    eval_early_every steps up to eval_early_until, and its last step."""
    return [s for s in range(cfg.steps + 1) if _due(cfg, s)]


def _copy(model: GPT) -> GPT:
    """A copy of a one-run model."""
    return model.select([0])


def _reached(rows: list[dict], stop_gain: float | None) -> bool:
    """Whether the last evaluation's test J_1 is at least `stop_gain` above the base's (the
    evaluation at step 0): the run has passed the last level it is compared at."""
    return (
        stop_gain is not None
        and bool(rows)
        and rows[-1]["test_j1"] - rows[0]["test_j1"] >= (stop_gain)
    )


def _check_finite(row: dict, step: int) -> None:
    """Stop a run whose evaluation at `step` is not finite (a diverged model), naming the step
    and the metrics, before the row reaches metrics.csv."""
    bad = [k for k, v in row.items() if k not in _MAY_BE_NAN and not math.isfinite(v)]
    if bad:
        named = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise ValueError(
            f"RL step {step}: the model diverged (the metrics {named} are not finite); lower lr "
            "or check the objective's parameters"
        )


class _Ensemble:
    """The runs still training: their stacked model, stacked bases (the KL reference) and
    optimizer, in the order of `members`."""

    def __init__(self, members: list[_Member]) -> None:
        self.members = members
        self.model = GPT.stack([m.model for m in members])
        self.base = GPT.stack([m.run.base for m in members]).eval()
        self.opt = RunOptimizer(
            list(self.model.parameters()),
            [m.cfg.optimizer for m in members],
            [m.cfg.lr for m in members],
        )
        for i, m in enumerate(members):
            if m.opt_state is not None:
                self.opt.load_run(i, m.opt_state)  # checked when the member read it
            m.model = m.opt_state = None  # the ensemble holds them now

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def keep(self, index: list[int]) -> None:
        """Continue with members `index` only (the others have ended)."""
        self.members = [self.members[i] for i in index]
        if not index:
            return
        self.model = self.model.select(index)
        self.base = self.base.select(index).eval()
        self.opt = self.opt.select(list(self.model.parameters()), index)

    def run_of(self, counts: Sequence[int]) -> torch.Tensor:
        """The ensemble position of each of counts[i] rows of member i, grouped by member."""
        return torch.repeat_interleave(
            torch.arange(len(counts), device=self.device),
            torch.as_tensor(list(counts), device=self.device),
        )

    def state_of(self, i: int) -> dict:
        """Member i's model as a one-run state dict (CPU copies)."""
        return {k: v[i : i + 1].detach().cpu().clone() for k, v in self.model.state_dict().items()}


def _hard_prompts(ens: _Ensemble) -> None:
    """Mark each member's test prompts that its base almost never solves (J_1 below the regime
    rule's hard_j1), from one exact evaluation of all the bases."""
    paths = PathSet.of_runs({i: m.paths["test"] for i, m in enumerate(ens.members)})
    with torch.no_grad():
        j1 = exact_metrics(ens.base, ens.members[0].task, paths, (), ens.members[0].cfg.temperature)
    start = 0
    for m in ens.members:
        n = len(m.paths["test"])
        m.hard = j1["j1"][start : start + n] < m.regime.hard_j1
        start += n


def _evaluate(ens: _Ensemble, due: list[int]) -> dict[int, tuple[dict, dict]]:
    """Exact evaluation of the train and test prompts of members `due` (one batched forward per
    split), plus each one's KL to its base on its test prompts: member -> (row, per-prompt)."""
    members = ens.members
    first = members[due[0]]
    out: dict[int, tuple[dict, dict]] = {i: ({"step": members[i].step}, {}) for i in due}
    for split in SPLITS:
        paths = PathSet.of_runs({i: members[i].paths[split] for i in due})
        m = exact_metrics(ens.model, first.task, paths, (64,), first.cfg.temperature)
        kl = _kl(ens, due) if split == "test" else None
        start = 0
        for i in due:
            member = members[i]
            n = len(member.paths[split])
            sl = slice(start, start + n)
            start += n
            j1 = m["j1"][sl]
            row, per = out[i]
            row[f"{split}_j1"] = float(j1.mean())
            finite = bool(torch.isfinite(j1).all())  # else the row fails _check_finite
            for k in REPORT_KS:
                row[f"{split}_pass@{k}"] = float(pass_at_k(j1, k).mean()) if finite else math.nan
            row[f"{split}_distinct@64"] = float(m["distinct@64"][sl].mean())
            row[f"{split}_modes_eff"] = float(m["modes_eff"][sl].mean())
            if kl is not None:
                kl_i = kl[i]
                row["test_kl"] = float(kl_i.mean())
                hard = member.hard
                row["test_hard_j1"] = float(j1[hard].mean()) if hard.any() else math.nan
            else:
                kl_i = torch.full_like(j1, math.nan)
            pairs = member.paths[split].pairs
            per_split = {
                "step": [member.step] * n,
                "split": [split] * n,
                "prompt": list(range(n)),
                "source": pairs[:, 0].tolist(),
                "target": pairs[:, 1].tolist(),
                "j1": j1.tolist(),
                "distinct@64": m["distinct@64"][sl].tolist(),
                "modes_eff": m["modes_eff"][sl].tolist(),
                "kl": kl_i.tolist(),
            }
            for name, values in per_split.items():
                per.setdefault(name, []).extend(values)
    return out


def _kl(ens: _Ensemble, due: list[int]) -> dict[int, torch.Tensor]:
    """Each due member's per-prompt KL estimate to its base, from its own KL stream."""
    members = ens.members
    gens: list[torch.Generator | None] = [None] * len(members)
    for i in due:
        m = members[i]
        gens[i] = streams.generator(streams.kl(m.cfg.seed, m.step), ens.device)
    pairs = torch.cat([members[i].paths["test"].pairs for i in due])
    prompt_run = ens.run_of([len(members[i].paths["test"]) if i in due else 0
                             for i in range(len(members))])  # fmt: skip
    first = members[due[0]]
    kl = kl_to_reference(
        ens.model, ens.base, first.task, pairs, first.cfg.kl_samples, gens,
        first.cfg.temperature, prompt_run,
    )  # fmt: skip
    out, start = {}, 0
    for i in due:
        n = len(members[i].paths["test"])
        out[i] = kl[start : start + n]
        start += n
    return out


def _rl_step(ens: _Ensemble) -> dict[int, dict | Exception]:
    """One RL step of every member (module docstring): member -> its step's metrics, or the
    error that ends it."""
    members, dev = ens.members, ens.device
    first = members[0]
    cfg0, task0 = first.cfg, first.task
    b, n = cfg0.batch_prompts, cfg0.n
    outcome: dict[int, dict | Exception] = {}
    t0, cpu0 = time.perf_counter(), time.process_time()
    pairs = []
    for m in members:
        train_pairs = m.task.rl_train_pairs
        idx = torch.randint(len(train_pairs), (b,), generator=m.gen, device=dev).cpu()
        pairs.append(train_pairs[idx])
    prompts = torch.cat([m.task.prompts(p) for m, p in zip(members, pairs, strict=True)]).to(dev)
    prompt_run = ens.run_of([b] * len(members))
    ens.model.eval()
    sampler = sample_swor if cfg0.sampler == "swor" else sample_iid
    answers, logp_old = sampler(
        ens.model, prompts, n, task0.max_new_tokens, task0.eos, task0.pad, cfg0.temperature,
        [m.gen for m in members], prompt_run=prompt_run,
    )  # fmt: skip
    t1 = time.perf_counter()
    length = answers.shape[-1]
    answers_cpu = answers.view(len(members), b * n, length).cpu()
    rewards = [
        m.task.verify(p.repeat_interleave(n, 0), answers_cpu[i]).view(b, n)
        for i, (m, p) in enumerate(zip(members, pairs, strict=True))
    ]
    t2 = time.perf_counter()
    logp_old = logp_old.view(len(members), b, n).cpu()
    weights = []
    for i, m in enumerate(members):
        try:
            w = m.obj.weights(rewards[i], m.cfg.k, logprobs=logp_old[i])
            if w.shape != (b, n):
                raise ValueError(f"objective {m.cfg.objective} gave weights of shape "
                                 f"{tuple(w.shape)} for rewards of shape {(b, n)}")  # fmt: skip
        except Exception as err:  # noqa: BLE001 - one run's objective ends that run only
            outcome[i] = ValueError(f"RL step {m.step + 1}: {type(err).__name__}: {err}")
            w = torch.zeros(b, n, dtype=torch.float64)
        weights.append(w)
    t3 = time.perf_counter()
    ens.model.train()
    w = torch.stack(weights).to(dev)
    logp, ent = sequence_logprob(
        ens.model, prompts.repeat_interleave(n, 0), answers.view(-1, length), task0.eos,
        cfg0.temperature, prompt_run.repeat_interleave(n),
    )  # fmt: skip
    logp, ent = logp.view(len(members), b, n), ent.view(len(members), b * n)
    coef = torch.tensor([m.cfg.entropy for m in members], dtype=logp.dtype, device=dev)
    loss = -(w.to(logp.dtype) * logp).sum(2).mean(1) - coef * ent.mean(1)
    ens.opt.zero_grad()
    loss.sum().backward()
    params = [p for p in ens.model.parameters() if p.grad is not None]
    norms = ens.model.ops.grad_norms([p.grad for p in params])
    clips = torch.tensor(
        [m.cfg.grad_clip if m.cfg.grad_clip > 0 else math.inf for m in members],
        dtype=norms.dtype, device=dev,
    )  # fmt: skip
    scale = (clips / (norms + 1e-6)).clamp(max=1.0)
    with torch.no_grad():
        for p in params:
            p.grad.mul_(scale.view(len(members), *([1] * (p.dim() - 1))))
    losses, norm_values = loss.detach().tolist(), norms.tolist()
    ens.opt.step()
    t4 = time.perf_counter()
    cpu = time.process_time() - cpu0
    share = 1.0 / len(members)
    tokens = answer_mask(answers, task0.eos).view(len(members), -1).sum(1).tolist()
    entropies = ent.detach().mean(1).tolist()
    for i, m in enumerate(members):
        for key, dt in zip(_PHASES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            m.timings[key] = m.timings.get(key, 0.0) + dt * share
        m.timings["cpu"] = m.timings.get("cpu", 0.0) + cpu * share  # process CPU s, its share
        m.timings["rollout_tokens"] = m.timings.get("rollout_tokens", 0.0) + float(tokens[i])
        if i in outcome:
            continue
        if not (math.isfinite(losses[i]) and math.isfinite(norm_values[i])):
            outcome[i] = ValueError(
                f"RL step {m.step + 1}: the loss ({losses[i]}) or the gradient norm "
                f"({norm_values[i]}) is not finite; lower lr (now {m.cfg.lr:g}) or check the "
                "objective's parameters"
            )
            continue
        p_hat = rewards[i].mean(1)
        outcome[i] = {
            "reward": float(p_hat.mean()),
            "alpha_batch": float(alpha_k(p_hat.numpy(), m.cfg.k).mean()),
            "zero_grad_frac": float((weights[i] == 0).all(1).float().mean()),
            "grad_norm": norm_values[i],
            "token_entropy": entropies[i],
        }
    return outcome


def _save(ens: _Ensemble, i: int) -> None:
    """Member i's checkpoint, metrics.csv and prompts.csv, each written atomically."""
    m = ens.members[i]
    checkpoint.save(
        m.out / "checkpoint.pt",
        {
            "key": m.key,
            "code": code_digest(),
            "model": ens.state_of(i),
            "opt": ens.opt.state_of(i),
            "gen": m.gen.get_state(),
            "rows": m.rows,
            "prompt_rows": m.prompt_rows,
            "step": m.step,
            "obj_gen": m.obj.generator.get_state() if m.obj.stochastic else None,
        },
    )
    atomic_write_text(m.out / "metrics.csv", pd.DataFrame(m.rows).to_csv(index=False))
    atomic_write_text(m.out / "prompts.csv", pd.DataFrame(m.prompt_rows).to_csv(index=False))


def _evaluation_phase(ens: _Ensemble, failed: dict[int, Exception]) -> None:
    """Evaluate the members due at their step (not again at the step they resumed from), record
    their rows and write their files; a member whose evaluation is not finite fails."""
    members = ens.members
    due = [i for i, m in enumerate(members) if m.due]
    fresh = [i for i in due if members[i].step > members[i].resumed_at or not members[i].rows]
    rows = _evaluate(ens, fresh) if fresh else {}
    for i in due:
        m = members[i]
        if i in rows:
            row, per = rows[i]
            if m.acc:
                row.update({k: float(np.mean([a[k] for a in m.acc])) for k in m.acc[0]})
            try:
                _check_finite(row, m.step)
            except ValueError as err:
                failed[i] = err
                continue
            m.rows.append(row)
            for name, values in per.items():
                m.prompt_rows.setdefault(name, []).extend(values)
        m.acc = []
        _save(ens, i)


def _finish(m: _Member, error: Exception | None, started: float) -> RunResult:
    """The result of a member that ends here, with its timings.json written."""
    if m.timings:
        atomic_write_text(m.out / "timings.json", json.dumps(m.timings, indent=1))
    metrics = None if error else pd.DataFrame(m.rows)
    return RunResult(metrics, error, dict(m.timings), time.perf_counter() - started, m.note)


def train_ensemble(
    runs: Sequence[Run],
    *,
    fresh: bool = False,
    until: int | None = None,
    progress: bool = True,
    fresh_hint: bool = True,
    on_finish: Callable[[int, RunResult], None] | None = None,
) -> list[RunResult]:
    """Train `runs` (one model and task shape: :func:`pack_key`) as one ensemble; each writes
    out/metrics.csv, prompts.csv, checkpoint.pt and timings.json, resumable from its checkpoint,
    under an exclusive lock on its folder. Returns each run's result in order; a run that fails
    (a bad checkpoint, a diverged model, an objective that raises) fails alone.

    fresh: ignore existing checkpoints. until: stop each run after this step (to simulate an
    interruption; calling again resumes). fresh_hint: whether the caller has a --fresh flag to
    suggest in errors (`train` does, `sweep` does not). on_finish(i, result) is called as run i
    ends (a sweep marks it done then, while the others go on)."""
    if not runs:
        return []
    keys = {pack_key(r.profile, r.cfg, build_task(r.profile.task)) for r in runs}
    if len(keys) > 1:
        raise ValueError("runs of one ensemble must share the model and task shapes, the batch, "
                         "the sampler, the temperature and the device")  # fmt: skip
    results: dict[int, RunResult] = {}
    with contextlib.ExitStack() as stack:
        members: list[_Member] = []
        index: list[int] = []
        for j, r in enumerate(runs):
            try:
                out = writable_dir(r.out, "out_dir")
                stack.enter_context(exclusive(out))
                remove_stale_temporaries(out)
                dev = (
                    pick_device(r.cfg.device) if r.cfg.device else next(r.base.parameters()).device
                )
                base = r.base.to(dev).eval()
                members.append(_Member(dataclasses.replace(r, out=out, base=base), fresh, until,
                                       fresh_hint))  # fmt: skip
                index.append(j)
            except (ValueError, OSError) as err:
                results[j] = RunResult(None, err)
                if on_finish is not None:
                    on_finish(j, results[j])
        if members:
            ens = _Ensemble(members)
            position = {id(m): j for m, j in zip(members, index, strict=True)}

            def ended(member: _Member, result: RunResult) -> None:
                if on_finish is not None:
                    on_finish(position[id(member)], result)

            for j, res in zip(index, _train(ens, progress, ended), strict=True):
                results[j] = res
    return [results[j] for j in range(len(runs))]


def _train(
    ens: _Ensemble, progress: bool, report: Callable[[_Member, RunResult], None]
) -> list[RunResult]:
    """The lockstep loop: evaluate who is due, let the finished and failed leave, step the rest."""
    order = list(ens.members)
    started = time.perf_counter()
    results: dict[int, RunResult] = {}
    total = sum(max(0, m.last - m.step) for m in ens.members)
    label = (f"rl {order[0].cfg.objective}/{order[0].cfg.sampler} s{order[0].cfg.seed}"
             if len(order) == 1 else f"rl ensemble of {len(order)}")  # fmt: skip
    bar = progress_bar(None, total=total, desc=label, disable=not progress, leave=False)
    _hard_prompts(ens)
    try:
        while ens.members:
            failed: dict[int, Exception] = {}
            _evaluation_phase(ens, failed)
            ended = {i: failed.get(i) for i, m in enumerate(ens.members) if i in failed
                     or m.finished}  # fmt: skip
            for i, err in ended.items():
                m = ens.members[i]
                results[id(m)] = _finish(m, err, started)
                report(m, results[id(m)])
            keep = [i for i in range(len(ens.members)) if i not in ended]
            if len(keep) < len(ens.members):
                ens.keep(keep)
            if not ens.members:
                break
            try:
                outcome = _rl_step(ens)
            except Exception as err:  # noqa: BLE001 - a batched failure ends every run in it
                step = ens.members[0].step + 1
                outcome = {i: ValueError(f"RL step {step}: {type(err).__name__}: {err}")
                           for i in range(len(ens.members))}  # fmt: skip
            keep = []
            for i, m in enumerate(ens.members):
                result = outcome[i]
                if isinstance(result, Exception):
                    results[id(m)] = _finish(m, result, started)
                    report(m, results[id(m)])
                    continue
                m.acc.append(result)
                m.step += 1
                keep.append(i)
            bar.update(len(ens.members))
            if len(keep) < len(ens.members):
                ens.keep(keep)
    finally:
        bar.close()
    return [results[id(m)] for m in order]


def train_rl(
    base: GPT,
    profile: ProfileConfig,
    cfg: RLConfig,
    out_dir: str | Path,
    *,
    fresh: bool = False,
    until: int | None = None,
    progress: bool = True,
    fresh_hint: bool = True,
) -> pd.DataFrame:
    """RL from a copy of `base` on the task of `profile`: an ensemble of one
    (:func:`train_ensemble`); returns its metrics, or raises the error that ended it."""
    (result,) = train_ensemble(
        [Run(base, profile, cfg, Path(out_dir))], fresh=fresh, until=until, progress=progress,
        fresh_hint=fresh_hint,
    )  # fmt: skip
    if result.error is not None:
        raise result.error
    return result.metrics


def load_trained(out_dir: str | Path, profile: ProfileConfig, device: str | None = None) -> GPT:
    """The model of a run's latest checkpoint (out_dir/checkpoint.pt), loaded weights-only."""
    path = Path(out_dir) / "checkpoint.pt"
    task = build_task(profile.task)
    model = build_model(task, profile.model, torch.device("cpu"))
    remedy = "rerun the training"
    saved = _load_run(path, model, None, remedy)
    checkpoint.restore(model, saved["model"], path, "run checkpoint", remedy)
    return model.to(pick_device(device, profile.model.numerics)).eval()


def run_trial(
    profile: ProfileConfig,
    cfg: RLConfig,
    out_dir: str | Path,
    base_path: str | Path,
    *,
    owned_base: bool = False,
    fresh: bool = False,
    progress: bool = False,
    fresh_hint: bool = True,
) -> tuple[pd.DataFrame, dict]:
    """One train run: the base of `profile` (pretrained into `base_path` unless it is there),
    then RL with `cfg` into `out_dir`. Returns (metrics, timings {"pretrain_s", "rl_s"}).

    owned_base: `base_path` is this run's own file (<out>/base.pt), which may be replaced when it
    holds another configuration; a base the user named is never overwritten. fresh_hint:
    whether errors may suggest --fresh (the caller has that flag)."""
    check_fits(profile, cfg)
    t0 = time.perf_counter()
    base = load_or_pretrain(
        profile, base_path, cfg.device, progress=progress, owned=owned_base, fresh=fresh,
        fresh_hint=fresh_hint,
    )  # fmt: skip
    t1 = time.perf_counter()
    metrics = train_rl(
        base, profile, cfg, out_dir, fresh=fresh, progress=progress, fresh_hint=fresh_hint
    )
    return metrics, {"pretrain_s": t1 - t0, "rl_s": time.perf_counter() - t1}


def run_pack(
    trials: Sequence[tuple[ProfileConfig, RLConfig, str | Path, str | Path]],
    progress: bool = False,
    on_finish: Callable[[int, RunResult], None] | None = None,
) -> list[RunResult]:
    """The trials (profile, cfg, out_dir, base_path) of one sweep job as one ensemble, from the
    shared bases (already pretrained: they are read, never written). A trial whose base cannot be
    read fails alone."""
    runs, index, results = [], [], {}
    for j, (profile, cfg, out_dir, base_path) in enumerate(trials):
        try:
            check_fits(profile, cfg)
            base = load_or_pretrain(profile, base_path, cfg.device, progress=False,
                                    owned=False, fresh_hint=False)  # fmt: skip
            runs.append(Run(base, profile, cfg, Path(out_dir)))
            index.append(j)
        except (ValueError, OSError) as err:
            results[j] = RunResult(None, err)
            if on_finish is not None:
                on_finish(j, results[j])

    def ended(i: int, result: RunResult) -> None:
        if on_finish is not None:
            on_finish(index[i], result)

    trained = train_ensemble(runs, progress=progress, fresh_hint=False, on_finish=ended)
    for j, res in zip(index, trained, strict=True):
        results[j] = res
    return [results[j] for j in range(len(trials))]
