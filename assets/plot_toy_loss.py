"""Draw assets/toy_loss.png from the committed loss logs of the toy recipe's UNet stages (assets/README.md).

    python assets/plot_toy_loss.py

Each stage continues the one before it, so its curve starts where that one ended: one step axis per variant.
"""

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from ootd_lib.viz import read_loss_csv

ASSETS = Path(__file__).resolve().parent
STAGES = {  # variant: [(label, csv)], in training order
    "hd": [("stage 2 (lr 1e-3)", "toy_hd_loss.csv"), ("stage 3 (lr 5e-4)", "toy_hd_more_loss.csv")],
    "dc": [("stage 2 (lr 1e-3)", "toy_dc_loss.csv"), ("stage 3 (lr 5e-4)", "toy_dc_more_loss.csv"),
           ("stage 4 (lr 3e-4)", "toy_dc_stage4_loss.csv")],
}
SMOOTH = 25


def main(out=ASSETS / "toy_loss.png"):
    fig = Figure(figsize=(8, 3.6))
    ax = fig.subplots()
    for colour, (variant, stages) in zip(("tab:blue", "tab:orange"), STAGES.items()):
        offset = 0
        for style, (label, name) in zip(("-", "--", ":"), stages):
            steps, losses = read_loss_csv(ASSETS / name)
            mean = np.convolve(losses, np.ones(SMOOTH) / SMOOTH, "valid")
            ax.plot(np.asarray(steps[SMOOTH - 1:]) + offset, mean, style, color=colour, label=f"{variant} {label}")
            offset += int(steps[-1])
    ax.set(xlabel="step", ylabel=f"truncated-SNR ε-MSE (moving mean of {SMOOTH} logs)", yscale="log",
           title="toy UNets: training loss")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    print(f"written {out}")


if __name__ == "__main__":
    main()
