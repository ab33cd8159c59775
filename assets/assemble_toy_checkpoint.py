"""Assemble assets/toy_checkpoint from the toy recipe's stages: one released-layout folder with both variants, one
shared VAE and one set of encoders, as the release has.

    python assets/assemble_toy_checkpoint.py --hd runs/toy_hd_stage4/pipeline --dc runs/toy_dc_stage5/pipeline \\
        --vae runs/toy_vae_decoder4/vae

``--hd`` / ``--dc``: exported training runs (``<output_dir>/pipeline``); ``--vae``: the VAE to ship (a decoder trained
further by ``configs/toy_vae_decoder.yaml`` … ``configs/toy_vae_decoder4.yaml``). Refused unless the pieces fit
together: both runs share their frozen encoders, and the VAE's encoder and latent scale are the ones both were trained
on (only its decoder may differ).
``--unet-dtype float16`` stores the UNets in half precision (the loaders read them back as float32): the 48/96/96
UNets of ``configs/toy_hd_wide.yaml`` are 25 MiB a pair in float32, over the 20 MB budget of a variant, and 12.7 MiB
in float16.

The same script keeps one finished stage of a run that spans sessions (``runs/`` does not outlive a session): with
``--out assets/stages/<name>``, ``--dc`` and ``--vae`` left out (the stage keeps its own VAE), ``--unet-dtype float16``.
The next stage's ``init_unets`` names that folder.

``model_index.json`` records ``latent_mask: any`` (``--latent-mask``): at 128×96 a latent cell is 8 pixels, as wide as
a toy trouser leg, and the released ``nearest`` downsampling drops such parts of the mask, so repaint pastes the
person's own trousers back (assets/README.md, "The latent repaint mask"). The folder is written beside the old one and
renamed into place.
"""

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import torch

from ootd_lib.config import LATENT_MASKS
from ootd_lib.errors import WeightsError
from ootd_lib.models import _swap_in, add_variant, load_official_components, load_vae

OUT = Path(__file__).resolve().parent / "toy_checkpoint"


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def main(hd: Path, dc: Path | None = None, vae: Path | None = None, out: Path = OUT, latent_mask: str = "any",
         unet_dtype: torch.dtype | None = None) -> Path:
    runs = {"hd": load_official_components(hd, "hd")}
    if dc is not None:
        runs["dc"] = load_official_components(dc, "dc")
        for name in ("text_encoder", "image_encoder"):
            if not same_weights(runs["hd"][name], runs["dc"][name]):
                raise WeightsError(f"{hd} and {dc} were trained with different {name}s; train both from one toy stage")
    new_vae = runs["hd"]["vae"] if vae is None else load_vae(vae)
    for name, c in runs.items():
        if not (same_weights(c["vae"].encoder, new_vae.encoder)
                and c["vae"].config.scaling_factor == new_vae.config.scaling_factor):
            raise WeightsError(f"{vae} encodes differently from the VAE the {name} UNets were trained on: only its "
                               "decoder may differ (vae_train_encoder: false)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    shutil.copytree(hd, tmp, dirs_exist_ok=True)
    if vae is not None:
        shutil.rmtree(tmp / "checkpoints" / "ootd" / "vae")
        shutil.copytree(vae, tmp / "checkpoints" / "ootd" / "vae")
    for name, c in runs.items():
        if name == "dc" or unet_dtype is not None:  # hd's UNets came with the copy
            add_variant(tmp, c["unet_garm"], c["unet_vton"], name, dtype=unet_dtype)
    index = tmp / "checkpoints" / "ootd" / "model_index.json"
    index.write_text(json.dumps({**json.loads(index.read_text()), "latent_mask": latent_mask}, indent=2) + "\n")
    print(f"assembled {out} from {hd} (hd), {dc or 'no'} (dc) and {vae or 'its own'} (VAE)")
    return _swap_in(tmp, out)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hd", type=Path, required=True)
    p.add_argument("--dc", type=Path)
    p.add_argument("--vae", type=Path)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--latent-mask", choices=LATENT_MASKS, default="any")
    p.add_argument("--unet-dtype", choices=("float32", "float16"), default=None,
                   help="store the UNets in this dtype (default: as trained)")
    args = p.parse_args()
    main(args.hd, args.dc, args.vae, args.out, args.latent_mask, args.unet_dtype and getattr(torch, args.unet_dtype))
