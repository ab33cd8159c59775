"""Draw assets/toy_loss.png (the UNet stages) and assets/toy_vae_loss.png (the VAE stages) from the committed loss
logs of the toy recipe (assets/README.md).

    python assets/plot_toy_loss.py

Each stage continues the one before it, so its curve starts where that one ended: one step axis per variant.
"""

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from ootd_lib.viz import read_loss_csv

ASSETS = Path(__file__).resolve().parent
STAGES = {  # variant: [(label, csv)], in training order
    "hd": [("stage 2 (lr 1e-3)", "toy_hd_loss.csv"), ("stage 3 (lr 5e-4)", "toy_hd_more_loss.csv"),
           ("stage 4 (lr 3e-4, 2 048 new persons, EMA)", "toy_hd_stage4_loss.csv")],
    "dc": [("stage 2 (lr 1e-3)", "toy_dc_loss.csv"), ("stage 3 (lr 5e-4)", "toy_dc_more_loss.csv"),
           ("stage 4 (lr 3e-4)", "toy_dc_stage4_loss.csv"),
           ("stage 5 (lr 3e-4, 1 024 new persons)", "toy_dc_stage5_loss.csv"),
           ("stage 8 (lr 3e-4, new persons, lower_body greyed with a box)", "toy_dc_stage8_loss.csv")],
}
VAE_STAGES = {"VAE": [("1 (whole VAE, lr 1e-3)", "toy_vae_loss.csv"),
                      ("1b (decoder, lr 5e-4)", "toy_vae_decoder_loss.csv"),
                      ("1c (decoder, lr 3e-4)", "toy_vae_decoder2_loss.csv"),
                      ("1d (decoder, persons only, lr 3e-4)", "toy_vae_decoder3_loss.csv"),
                      ("1e (decoder, persons only, lr 2e-4)", "toy_vae_decoder4_loss.csv")]}
# the same run at two UNet widths (toy_unet_channels), both from step 0: stage 2's recipe, same batches and noise
WIDTH = {"hd": [("stage 2, 32/64/64 channels", "toy_hd_loss.csv"),
                ("width probe, 48/96/96 channels", "toy_hd_wide_loss.csv")]}
SMOOTH = 25
STYLES = ("-", "--", ":", "-.", (0, (1, 4)), (0, (5, 2, 1, 2, 1, 2)), (0, (8, 3)))  # one per stage of a variant


def plot(stages: dict, out: Path, ylabel: str, title: str, chain: bool = True):
    """One curve per run; with ``chain`` each run starts where the one before it ended (stages continuing each other),
    else every run starts at step 0 (runs compared with each other)."""
    fig = Figure(figsize=(8, 3.6))
    ax = fig.subplots()
    for colour, (variant, runs) in zip(("tab:blue", "tab:orange"), stages.items()):
        offset = 0
        if len(runs) > len(STYLES):  # zip would drop the later stages without a word
            raise ValueError(f"{variant}: {len(runs)} stages but {len(STYLES)} line styles; add styles")
        for k, (style, (label, name)) in enumerate(zip(STYLES, runs)):
            steps, losses = read_loss_csv(ASSETS / name)
            mean = np.convolve(losses, np.ones(SMOOTH) / SMOOTH, "valid")
            ax.plot(np.asarray(steps[SMOOTH - 1:]) + offset, mean, linestyle=style,
                    color=colour if len(stages) > 1 else f"C{k}", label=f"{variant} {label}")
            offset += int(steps[-1]) if chain else 0
    ax.set(xlabel="step", ylabel=f"{ylabel} (moving mean of {SMOOTH} logs)", yscale="log", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    print(f"written {out}")


def main():
    plot(STAGES, ASSETS / "toy_loss.png", "truncated-SNR ε-MSE", "toy UNets: training loss")
    # 1d and 1e see person images only, which carry more detail than the flat in-shop garments of 1–1c's pool: their
    # loss starts higher and is not comparable with the earlier stages'
    plot(VAE_STAGES, ASSETS / "toy_vae_loss.png", "MSE + L1", "toy VAE: training loss (64×48 crops)")
    plot(WIDTH, ASSETS / "toy_width_loss.png", "truncated-SNR ε-MSE", "toy hd UNets: two widths, one recipe",
         chain=False)


if __name__ == "__main__":
    main()
