"""
Every experiment of the README in one command: each technique's comparison plus plain vs all three.

    python -m tools.experiments.run --suite small            # the CPU budget: about 2 hours on 2 cores (README)
    python -m tools.experiments.run --suite gpu              # larger configs for one CUDA GPU
    python -m tools.experiments.run --suite small --only ngram,combined

Runs already finished (their out/ folder holds a complete log) are reused, so an interrupted suite picks up where
it stopped. Tables go to results/*.md, plots to results/*.png.
"""

import argparse
import importlib
import os
import time

from tools.experiments.common import ROOT

EXPERIMENTS = ("ngram", "mod", "planner", "planner_frozen", "combined")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=("small", "gpu"), default="small")
    parser.add_argument("--only", default=",".join(EXPERIMENTS), help="comma-separated: " + ", ".join(EXPERIMENTS))
    args = parser.parse_args()
    chosen = args.only.split(",")
    unknown = [name for name in chosen if name not in EXPERIMENTS]
    if unknown:
        parser.error(f"unknown experiment(s) {', '.join(unknown)}; choose from {', '.join(EXPERIMENTS)}")
    for name in chosen:
        t0 = time.time()
        print(f"=== {name} ({args.suite} suite)", flush=True)
        importlib.import_module(f"tools.experiments.{name}").run(args.suite, os.path.join(ROOT, "results"))
        print(f"=== {name} done in {(time.time() - t0) / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
