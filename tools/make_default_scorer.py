"""Regenerate the packaged default LAD scorer, ``scheduler/data/lad_scorer_default.pt``.

The checkpoint an agent with ``policy = "lad"``, ``lad_actor = "scorer"`` starts from when it
has no ``policy_checkpoint`` and no saved ``policy.pt`` (``lad_scorer.DEFAULT_CHECKPOINT``):

1. the warm start: the actor clones soft-greedy on synthetic states of 4–64 boxes with the
   paper's relative speed spread (``LADScorer.warm_start``, 1,500 steps, seed 0), and the
   critics are fitted to −(estimated finish) (``ScorerLearning.fit_critics``, 600 steps);
2. then ``--hours`` of simulated traffic in the twin (``twin_train.train_in_twin``, the
   paper's spread at ``--boxes``, loads cycling 0.5/0.7/0.9/1.1 in 5-minute segments,
   0.5 updates per box per simulated second); ``--hours 0`` ships the warm start alone.

    nice python tools/make_default_scorer.py                 # the shipped file: 32 boxes, 0.25 h
    nice python tools/make_default_scorer.py --hours 0       # the warm start only

The shipped file: 32 boxes, 0.25 simulated hours (loads 0.5/0.7/0.9: 17,569 tasks, 13,996
updates; about 5 min of one core). Equivalently, for step 2: ``dedgeai sim train --env
cluster --actor scorer --boxes 32 --hours 0.25 --train-steps-per-s 0.5 --out DIR`` then copy
DIR/policy.pt. About 40 KB; it loads on CPU with ``weights_only=True``
(``checkpoints.load_checkpoint``). Seeded and single-threaded: a rerun gives the same
weights. Figures: docs/results_cluster.md §4, "Training in the twin".
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from dedgeai.scheduler.lad_scorer import DEFAULT_CHECKPOINT  # noqa: E402
from dedgeai.scheduler.twin_scenarios import paper  # noqa: E402
from dedgeai.scheduler.twin_train import train_in_twin, warm_checkpoint  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hours", type=float, default=0.25, help="twin training (0: none)")
    parser.add_argument("--boxes", type=int, default=32)
    parser.add_argument("--train-steps-per-s", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_CHECKPOINT)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        warm = warm_checkpoint("lad", paper(args.boxes).capacities, Path(tmp), args.seed, "scorer")
        summary: dict[str, object] = {"hours": args.hours, "boxes": args.boxes}
        if args.hours > 0:
            path, stats = train_in_twin(
                paper(args.boxes),
                Path(tmp) / "trained.pt",
                hours=args.hours,
                seed=args.seed,
                start=warm,
                train_steps_per_box_s=args.train_steps_per_s,
                actor="scorer",
                on_segment=lambda s: print(json.dumps(s), flush=True),
            )
            summary |= {"tasks": stats.tasks, "updates": stats.trained_steps}
        else:
            path = warm
        args.out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, args.out)
    summary["wall_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(summary), f"wrote {args.out} ({args.out.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
