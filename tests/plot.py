"""`make plot`: the paper's Fig. 1 (right) view of runs: reward, and the length of correct and of
incorrect responses, per step, from each run's metrics.jsonl, several runs overlaid.

    python tests/plot.py RUN_DIR [RUN_DIR ...]    # or: python drgrpo.py plot RUN_DIR ...

Needs matplotlib (an optional extra that `make install` brings). Writes curves.png in the runs'
common parent directory and prints its path.
"""

import json
import os
import sys


def plot(run_dirs, path=None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for run in run_dirs:
        lines = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]
        steps, name = [m["step"] for m in lines], os.path.basename(os.path.normpath(run))
        for ax, key in zip(axes, ("reward", "len_correct", "len_incorrect"), strict=True):
            ax.plot(steps, [float("nan") if m[key] is None else m[key] for m in lines], label=name)
    for ax, title in zip(
        axes,
        (
            "reward (training samples)",
            "mean length of correct responses (tokens)",
            "mean length of incorrect responses (tokens)",
        ),
        strict=True,
    ):
        ax.set(xlabel="RL step", title=title)
        ax.legend()
    fig.tight_layout()
    path = path or os.path.join(
        os.path.commonpath([os.path.abspath(r) for r in run_dirs]), "curves.png"
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"figure: {path}")
    return path


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python tests/plot.py RUN_DIR [RUN_DIR ...]")
    plot(sys.argv[1:])
