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

The same script keeps one finished stage of a line of runs that spans sessions (``runs/`` does not outlive a
session): ``--hd`` or ``--dc`` alone, ``--out assets/stages/<name>``, ``--unet-dtype float16``, no ``--vae`` (the stage
keeps its own).
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
from ootd_lib.errors import InputError, WeightsError
from ootd_lib.models import _swap_in, add_variant, load_official_components, load_vae

OUT = Path(__file__).resolve().parent / "toy_checkpoint"


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def main(hd: Path | None = None, dc: Path | None = None, vae: Path | None = None, out: Path = OUT,
         latent_mask: str = "any", unet_dtype: torch.dtype | None = None) -> Path:
    runs = {name: (Path(path), load_official_components(path, name)) for name, path in (("hd", hd), ("dc", dc)) if path}
    if not runs:
        raise InputError("nothing to assemble: give --hd, --dc or both (exported runs, <output_dir>/pipeline)")
    (first, first_c), *rest = runs.values()
    for path, c in rest:
        for name in ("text_encoder", "image_encoder"):
            if not same_weights(first_c[name], c[name]):
                raise WeightsError(f"{first} and {path} were trained with different {name}s; train both from one "
                                   "toy stage")
    new_vae = first_c["vae"] if vae is None else load_vae(vae)
    for name, (_, c) in runs.items():
        if not (same_weights(c["vae"].encoder, new_vae.encoder)
                and c["vae"].config.scaling_factor == new_vae.config.scaling_factor):
            raise WeightsError(f"{vae} encodes differently from the VAE the {name} UNets were trained on: only its "
                               "decoder may differ (vae_train_encoder: false)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    shutil.copytree(first, tmp, dirs_exist_ok=True)  # its encoders, tokenizer, scheduler and its own UNets
    if vae is not None:
        shutil.rmtree(tmp / "checkpoints" / "ootd" / "vae")
        shutil.copytree(vae, tmp / "checkpoints" / "ootd" / "vae")
    for name, (path, c) in runs.items():
        if path != first or unet_dtype is not None:
            add_variant(tmp, c["unet_garm"], c["unet_vton"], name, dtype=unet_dtype)
    index = tmp / "checkpoints" / "ootd" / "model_index.json"
    index.write_text(json.dumps({**json.loads(index.read_text()), "latent_mask": latent_mask}, indent=2) + "\n")
    print(f"assembled {out} from {hd or 'no'} (hd), {dc or 'no'} (dc) and {vae or 'their own'} (VAE)")
    return _swap_in(tmp, out)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hd", type=Path)
    p.add_argument("--dc", type=Path)
    p.add_argument("--vae", type=Path)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--latent-mask", choices=LATENT_MASKS, default="any")
    p.add_argument("--unet-dtype", choices=("float32", "float16"), default=None,
                   help="store the UNets in this dtype (default: as trained)")
    args = p.parse_args()
    main(args.hd, args.dc, args.vae, args.out, args.latent_mask, args.unet_dtype and getattr(torch, args.unet_dtype))
