"""Plot a ``probe_stages.py --per-layer`` record: test UAR of every layer, pretrained against fine-tuned.

    python results/ravdess/plot_probe_layers.py results/ravdess/probe_layers.json   # writes probe_layers.png

One thin line per fold and encoder, the mean over folds thick; encoders are
grouped by their step name's stage (``pretrained``, ``stage1``, ...).
"""

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def main() -> None:
    path = Path(sys.argv[1])
    record = json.loads(path.read_text())
    groups: dict[str, list[list[float]]] = {}
    for rows in record["folds"].values():
        for name, row in rows.items():
            groups.setdefault(name.split("-")[0], []).append(row["test_uar_per_layer"])
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for (stage, curves), color in zip(groups.items(), plt.rcParams["axes.prop_cycle"].by_key()["color"]):
        curves = np.array(curves)
        layers = np.arange(curves.shape[1])
        ax.plot(layers.repeat(len(curves)).reshape(-1, len(curves)), curves.T, color=color, alpha=0.25, lw=0.8)
        ax.plot(layers, curves.mean(0), color=color, lw=2.5, marker="o",
                label=f"{stage} (best mean {curves.mean(0).max():.1f})")
    ax.set(xlabel="hidden state (0: front-end output)", ylabel="test UAR (%)",
           title=f"Linear probe per layer, C = {record['c']}, {len(record['folds'])} folds")
    ax.set_xticks(layers)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path.with_suffix(".png"), dpi=120)
    print(path.with_suffix(".png"))


if __name__ == "__main__":
    main()
