"""Where a toy checkpoint's training loss goes: the ε-error inside and outside the latent mask, per noise level, with
and without the garment latents and with another garment's prompt (assets/README.md, "Where the training loss goes").

    python assets/loss_split.py assets/toy_checkpoint hd
    python assets/loss_split.py assets/stages/toy_dc_wide dc --pairs 64

On the paired test split of the seed-0 toy wardrobe (held out from every stage), the same noise for every model
(seed 0), at t = 50, 150, ..., 950: ε-MSE inside the `any` latent mask (the cells sampling regenerates) and outside it
(the cells repaint replaces with the noised original after every step, so their prediction is never used), the x0
error inside implied by the prediction, and the same inside with the garment latents zeroed (as outfitting dropout
does in training and the unconditional branch of guidance at sampling), and inside with the garment latents kept
but the CLIP prompt of the next pair's garment. Then the loss as `loss_weighting:
truncated_snr` weighs it, split into inside and outside, and the part of it the garment latents remove.
"""

import argparse

import torch

from make_toy_eval import DATA  # the evaluation's wardrobes (seed 0): their test split is held out from every stage
from ootd_lib.conditioning import encode_batch
from ootd_lib.config import CATEGORIES, Config
from ootd_lib.data import build_dataset
from ootd_lib.models import OOTDModel, make_noise_scheduler
from ootd_lib.pipeline import load_toy_pipeline
from ootd_lib.toydata import toy_dataset
from ootd_lib.training import loss_weights

TIMESTEPS = list(range(50, 1000, 100))


@torch.no_grad()
def split(model, scheduler, latents: dict, generator) -> dict:
    """Sums over one batch, per timestep: squared ε-error inside/outside the mask, x0 error inside, both inside also
    with the garment latents zeroed (``_nog``) and with the next pair's prompt (``_op``), and the cell counts."""
    m, target, sums = latents["mask"], latents["target"], {}
    other_prompt = latents["prompt"].roll(1, 0)  # the next pair's garment: the prompt alone made wrong
    for t in TIMESTEPS:
        noise = torch.randn(target.shape, generator=generator)
        tt = torch.full((len(target),), t)
        noisy, a = scheduler.add_noise(target, noise, tt), scheduler.alphas_cumprod[t]
        row = dict(n_in=float(m.expand_as(target).sum()), n_out=float((1 - m).expand_as(target).sum()))
        for tag, garment, prompt in (("", latents["garment"], latents["prompt"]),
                                     ("_nog", torch.zeros_like(latents["garment"]), latents["prompt"]),
                                     ("_op", latents["garment"], other_prompt)):
            eps = model(noisy, tt, latents["person"], garment, prompt)
            x0 = (noisy - (1 - a).sqrt() * eps) / a.sqrt()
            row["eps_in" + tag] = float(((eps - noise).pow(2) * m).sum())
            row["x0_in" + tag] = float(((x0 - target).pow(2) * m).sum())
            if tag == "":
                row["eps_out"] = float(((eps - noise).pow(2) * (1 - m)).sum())
        sums[t] = row
    return sums


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="a released-layout toy folder (assets/toy_checkpoint, assets/stages/...)")
    ap.add_argument("variant", choices=sorted(DATA))
    ap.add_argument("--pairs", type=int, default=64)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    pipe = load_toy_pipeline(args.model, variant=args.variant)
    comps = {k: getattr(pipe, k) for k in ("vae", "tokenizer", "text_encoder", "image_encoder", "feature_extractor")}
    layout, n_train = DATA[args.variant]
    root = toy_dataset(f"data/toy_{layout}", layout=layout, n_train=n_train, n_test=64, seed=0, progress=False)
    cfg = Config.for_profile("toy", model_type=args.variant, data_root=str(root), layout=layout,
                             toy_train=n_train, toy_test=64,
                             categories=CATEGORIES if layout == "dresscode" else ("upper_body",))
    dataset = build_dataset(cfg, split="test", pairing="paired", cache_dir=f"runs/loss_split_masks_{args.variant}")
    pairs = torch.utils.data.Subset(dataset, range(min(args.pairs, len(dataset))))
    model, scheduler = OOTDModel(pipe.unet_garm, pipe.unet_vton).eval(), make_noise_scheduler()
    generator, total = torch.Generator().manual_seed(0), {}
    for batch in torch.utils.data.DataLoader(pairs, batch_size=16):
        for t, row in split(model, scheduler, encode_batch(batch, comps, args.variant, "cpu", latent_mask="any"),
                            generator).items():
            total[t] = {k: total.get(t, {}).get(k, 0.0) + v for k, v in row.items()}
    weights = loss_weights(scheduler, torch.tensor(TIMESTEPS), "truncated_snr")
    print(f"{args.model} ({args.variant}, {len(pairs)} paired held-out pairs)")
    print("   t  eps_in  eps_out  eps_in(no garment)  x0_in  x0_in(no garment)  x0_in(other prompt)")
    loss_in = loss_out = gain = prompt_gain = 0.0
    for w, t in zip(weights.tolist(), TIMESTEPS):
        r = total[t]
        share = w / (r["n_in"] + r["n_out"]) / len(TIMESTEPS)  # this t's weight on a per-cell mean over all t
        print(f"{t:4d}  {r['eps_in'] / r['n_in']:.4f}  {r['eps_out'] / r['n_out']:.4f}   {r['eps_in_nog'] / r['n_in']:.4f}"
              f"              {r['x0_in'] / r['n_in']:.4f}  {r['x0_in_nog'] / r['n_in']:.4f}"
              f"             {r['x0_in_op'] / r['n_in']:.4f}")
        loss_in += share * r["eps_in"]
        loss_out += share * r["eps_out"]
        gain += share * (r["eps_in_nog"] - r["eps_in"])
        prompt_gain += share * (r["eps_in_op"] - r["eps_in"])
    print(f"truncated-SNR loss over these t: {loss_in + loss_out:.4f} = inside {loss_in:.4f} + outside {loss_out:.4f}; "
          f"the garment latents remove {gain:.4f} of it, the right prompt {prompt_gain:.4f}")


if __name__ == "__main__":
    main()
