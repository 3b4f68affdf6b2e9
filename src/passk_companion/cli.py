"""Command line: `python -m passk_companion <command>` (and `passk-companion <command>` once
installed).

    python -m passk_companion train --objective pkpo_loo --k 8 --sampler iid --entropy 0.01 \\
        --profile ci --out runs/x
    python -m passk_companion sweep sweeps/smoke.yaml --backend local --workers 2 --out runs/grid
    python -m passk_companion train --import my_objectives --objective mine --profile smoke \
        --out runs/mine
    python -m passk_companion reproduce --profile ci --nb "01 04" --results results
    python -m passk_companion report --results results
    python -m passk_companion html --results results

`train` pretrains the profile's base once (cached at <out>/base.pt, or --base PATH to share one;
a named base of another configuration is never overwritten), then runs RL; metrics.csv,
prompts.csv, checkpoint.pt and timings.json go to --out. Re-running the same command resumes from
the checkpoint; --fresh starts over. `--import MODULE` (train and sweep, repeatable) imports a
module that registers objectives, in this process and in every sweep worker; installed packages
register theirs through the entry-point group `passk_companion.objectives` without it. Every value
is checked before any work starts; errors are one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
from pathlib import Path

from passk_companion import validation

__all__ = ["main"]

# commands that need neither torch nor the model (parsed without importing them: fast)
LIGHT = ("reproduce", "execute", "report", "html", "compare-claims")


def _finite(text: str) -> float:
    """A command-line number, checked by passk_companion.validation.number (finite)."""
    try:
        return validation.number(float(text), "value")
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}") from None


def _positive_int(text: str) -> int:
    """A command-line integer >= 1, checked by passk_companion.validation.integer."""
    try:
        return validation.integer(int(text), "value", minimum=1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}") from None


def _light_parsers(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("reproduce", help="execute notebooks into a results folder (make reproduce)")
    r.add_argument("--profile", default="ci")
    r.add_argument("--nb", default="", help='notebook prefixes, e.g. "01 04" (default: all)')
    r.add_argument("--results", default="results")
    r.add_argument(
        "--store", default=None, help="keep one notebook's run as evidence in this folder"
    )
    r.add_argument(
        "--resume", nargs="?", const="1", default="", choices=["", "0", "1"],
        help="keep the sweep trials that an interrupted run of the same command finished",
    )  # fmt: skip
    e = sub.add_parser("execute", help="regenerate the stored notebook outputs (make execute)")
    e.add_argument("--nb", default="", help="notebook prefixes (default: all)")
    rep = sub.add_parser("report", help="build REPORT.md from results/claims/ and print it")
    rep.add_argument("--results", default=None, help="results folder (default: results/)")
    rep.add_argument(
        "--tables", action="store_true",
        help="write the tables of the stored claims into docs/claims.md and print them",
    )  # fmt: skip
    h = sub.add_parser("html", help="render the results folder into a static site (results/site)")
    h.add_argument("--results", default=None, help="results folder (default: results/)")
    c = sub.add_parser(
        "compare-claims", help="fail unless two results folders hold the same claims"
    )
    c.add_argument("first", help="a results folder (its claims/ is read)")
    c.add_argument("second", help="another results folder")
    c.add_argument("--nb", default="", help="notebook prefixes to compare (default: all)")


def _parser(light_only: bool = False) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="passk-companion", description="pass@k companion")
    sub = ap.add_subparsers(dest="command", required=True)
    if light_only:
        _light_parsers(sub)
        return ap
    from passk_companion import objectives, profiles
    from passk_companion.model import config

    t = sub.add_parser("train", help="pretrain (cached) then RL with one objective variant")
    t.add_argument("--objective", default="pass1_reinforce", help=", ".join(objectives.names()))
    t.add_argument("--k", type=int, default=None, help="k of pass@k objectives")
    t.add_argument("--n", type=int, default=None, help="rollouts per prompt")
    t.add_argument("--sampler", default="iid", choices=objectives.SAMPLERS)
    t.add_argument("--entropy", type=_finite, default=0.0, help="token-entropy bonus coefficient")
    t.add_argument("--steps", type=int, default=None, help="RL steps (default: the profile's)")
    t.add_argument("--lr", type=_finite, default=None)
    t.add_argument("--optimizer", default=None, choices=config.OPTIMIZERS)
    t.add_argument("--grad-clip", type=_finite, default=None, help="0: never clip")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--profile", default="ci", help=f"one of: {', '.join(profiles.PROFILES)}")
    t.add_argument("--out", required=True, help="output folder (one run at a time)")
    t.add_argument("--base", default=None, help="pretrained base file (default <out>/base.pt)")
    t.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if any)")
    t.add_argument("--threads", type=_positive_int, default=1, help="torch CPU threads")
    t.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    _import_argument(t)

    s = sub.add_parser("sweep", help="run a grid of train runs (local processes or Ray)")
    s.add_argument("grid", help="grid file (YAML): profile, overrides, grid")
    s.add_argument("--backend", default="local", choices=("local", "ray"))
    s.add_argument("--workers", type=_positive_int, default=1, help="parallel jobs (processes)")
    s.add_argument(
        "--ensemble", type=_positive_int, default=None,
        help="the most trials a job trains as one batched ensemble (default 16; 1: one each)",
    )  # fmt: skip
    s.add_argument("--out", required=True, help="sweep folder (trial folders, results.csv)")
    s.add_argument("--address", default=None, help="Ray cluster address (else $RAY_ADDRESS)")
    s.add_argument("--gpus-per-trial", type=_finite, default=None, help="ray: fractional GPUs")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.add_argument(
        "--max-trials", type=_positive_int, default=None, help="allow grids of more trials"
    )
    _import_argument(s)

    from passk_companion.integrations.rollout_logs import add_arguments as diagnose_arguments

    diagnose_arguments(sub.add_parser("diagnose", help="pass@k diagnostic of a log of rollouts"))

    _light_parsers(sub)
    return ap


def _import_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--import", dest="imports", action="append", default=[], metavar="MODULE",
        help="a module that registers objectives (repeatable; also imported by sweep workers)",
    )  # fmt: skip


def _device(name: str | None) -> str | None:
    import torch

    if name is None:
        return None
    try:
        dev = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"--device {name!r}: {err}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")
    return name


def _train(args: argparse.Namespace) -> int:
    import torch

    from passk_companion.files import exclusive, regular_file, writable_dir
    from passk_companion.model import config, rl
    from passk_companion.model.gpt import pick_device

    profile = config.for_profile(args.profile)
    overrides = {
        key: value
        for key, value in {
            "k": args.k,
            "n": args.n,
            "steps": args.steps,
            "lr": args.lr,
            "optimizer": args.optimizer,
            "grad_clip": args.grad_clip,
        }.items()
        if value is not None
    }
    cfg = dataclasses.replace(
        profile.rl,
        objective=args.objective,
        sampler=args.sampler,
        entropy=args.entropy,
        seed=args.seed,
        device=_device(args.device),
        **overrides,
    )
    config.check_fits(profile, cfg)  # --n too large for the profile: refused before any work
    if args.base is not None:  # a regular file, or one to create: never a FIFO or a device
        regular_file(args.base, "--base", must_exist=False)
    out = writable_dir(args.out, "--out")
    torch.set_num_threads(args.threads)
    with exclusive(out):
        df, times = rl.run_trial(
            profile,
            cfg,
            out,
            args.base or out / "base.pt",
            owned_base=args.base is None,
            fresh=args.fresh,
            progress=not args.quiet,
        )
    summary = {
        "pretrain_s": round(times["pretrain_s"], 2),
        "rl_s": round(times["rl_s"], 2),
        "device": str(pick_device(cfg.device, profile.model.numerics)),
        "final": {k: round(float(v), 4) for k, v in df.iloc[-1].items()},
    }
    timings = out / "timings.json"
    if timings.is_file():
        tm = json.loads(timings.read_text())
        summary["rollout_tokens_per_s"] = round(tm["rollout_tokens"] / max(tm["sample"], 1e-9), 1)
    print(json.dumps(summary, indent=1))
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from passk_companion.model import sweep

    grid = sweep.load_grid(args.grid)
    try:
        result = sweep.run(
            grid,
            out=args.out,
            backend=args.backend,
            workers=args.workers,
            address=args.address,
            gpus_per_trial=args.gpus_per_trial,
            progress=not args.quiet,
            **({"max_trials": args.max_trials} if args.max_trials else {}),
            **({"ensemble": args.ensemble} if args.ensemble else {}),
        )
    except (sweep.Interrupted, KeyboardInterrupt) as err:
        signum = err.signum if isinstance(err, sweep.Interrupted) else 2  # SIGINT
        print(
            f"error: the sweep was interrupted ({signal.Signals(signum).name}); its workers are "
            "stopped, finished trials are kept: rerun the same command to resume",
            file=sys.stderr,
        )
        return 128 + signum
    print(result.summary())
    return 0 if result.ok else 1


def _notebooks(args: argparse.Namespace) -> int:
    from passk_companion.reproduce import execute, reproduce

    try:
        if args.command == "reproduce":
            report = reproduce(
                args.profile, args.nb, args.results, args.store, resume=args.resume == "1"
            )
            print(report.read_text())
        else:
            execute(args.nb)
    except Exception as err:  # papermill is imported lazily, so match its error by name
        if type(err).__name__ != "PapermillExecutionError":
            raise
        print(
            f"error: a notebook failed in cell {err.exec_count}: {err.ename}: {err.evalue}",
            file=sys.stderr,
        )
        return 1
    return 0


def _compare_claims(args: argparse.Namespace) -> int:
    import re

    from passk_companion.evidence import claims

    prefixes = tuple(t for t in re.split(r"[\s,]+", args.nb) if t)
    sides = []
    for folder in (args.first, args.second):
        files = sorted(claims.claims_dir(Path(folder)).glob("*.csv"))
        rows = [c for f in files if f.stem.startswith(prefixes or "") for c in claims.read(f)]
        if not rows:
            raise ValueError(f"no claims under {Path(folder) / 'claims'} for {args.nb or 'any'}")
        sides.append(rows)
    lines = claims.differences(*sides)
    for line in lines:
        print(line)
    print(
        f"{len(sides[0])} and {len(sides[1])} claims: "
        + (f"{len(lines)} differences" if lines else "identical (verdicts, intervals, text)")
    )
    return 1 if lines else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    light = bool(argv) and argv[0] in LIGHT
    args = _parser(light_only=light).parse_args(argv)
    errors: tuple[type[Exception], ...] = (ValueError, OSError)  # OSError: a full disk ...
    if not light:
        from passk_companion.files import RunLockedError

        errors = (ValueError, OSError, RunLockedError)
    try:
        if args.command in ("train", "sweep"):
            from passk_companion import objectives

            objectives.use(args.imports)
        if args.command == "train":
            return _train(args)
        if args.command == "sweep":
            return _sweep(args)
        if args.command == "diagnose":
            from passk_companion.integrations.rollout_logs import main as diagnose

            return diagnose(args)
        if args.command in ("reproduce", "execute"):
            return _notebooks(args)
        if args.command == "compare-claims":
            return _compare_claims(args)
        if args.command == "report" and args.tables:
            from passk_companion.evidence.report import write_tables

            print(write_tables(), end="")
            return 0
        from passk_companion.files import writable_dir
        from passk_companion.runtime import results_dir

        if args.results:  # an existing folder of one's own, never / or /etc
            results = writable_dir(args.results, "--results", create=False)
        else:
            results = results_dir()
        if args.command == "report":
            from passk_companion.evidence.report import build

            print(build(results).read_text())
            return 0
        from passk_companion.evidence.site import build_site

        print(f"site: {build_site(results)}")
        return 0
    except errors as err:
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return 2


def _one_line(err: Exception) -> str:
    """An error as one line: an OSError as its reason and the file it names."""
    if isinstance(err, OSError) and err.strerror:
        text = err.strerror + (f": {err.filename}" if err.filename else "")
    else:
        text = str(err) or type(err).__name__
    return " ".join(text.split())


if __name__ == "__main__":
    raise SystemExit(main())
