"""Run by test_trl under torchrun with 2 CPU processes: 2 steps of PassKGRPOTrainer (pkpo_loo,
k = 4, 12 completions per process and step), each process writing what it saw to
<out>/rank<r>.json: TRL's gathered rewards, the advantages of its own slice, the logged metrics."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import test_trl


def main(out: Path) -> None:
    trainer, logs = test_trl.train(
        test_trl.Recording,
        out / "run",
        objective="pkpo_loo",
        k=4,
        config={"per_device_train_batch_size": 12},
    )
    rank = trainer.accelerator.process_index
    record = {
        "world": trainer.accelerator.num_processes,
        "rank": rank,
        "seen": [(r[:, 0].tolist(), a.tolist()) for r, a in trainer.seen],
        "logs": [{k: v for k, v in log.items() if k.startswith("passk/")} for log in logs],
    }
    (out / f"rank{rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
