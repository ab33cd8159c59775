"""Measure the shipped toy checkpoint and write assets/toy_eval.json (read by tests/test_toy_checkpoint.py).

    python assets/make_toy_eval.py            # both variants (~15 min per variant, 1 thread)
    python assets/make_toy_eval.py dc         # one variant: updates its entry, keeps the other

Both variants on 64 held-out unpaired pairs per category (20 UniPC steps, guidance 2.0, seed 0): the trained UNets and
the same architecture untrained (same VAE and encoders), each with the same model given another test garment as the
baseline that costs no training; then the trained model once more with the released latent mask (``nearest``), beside
the checkpoint's own (``any``, recorded in its ``model_index.json``). Every number comes from ``ootd evaluate``
(``ootd_lib.evaluation``); the file also records a digest of the weights it was measured on (each variant's UNets,
the VAE and the latent mask: ``models.weights_digest``), so a retrained checkpoint must be measured again.
"""

import json
import sys
from pathlib import Path

import torch

from ootd_lib.config import TOY_CHECKPOINT
from ootd_lib.app import evaluate_from_cli
from ootd_lib.models import weights_digest
from ootd_lib.toydata import toy_dataset

ASSETS = Path(__file__).resolve().parent
DATA = {"hd": ("vitonhd", 1024), "dc": ("dresscode", 512)}  # the training wardrobes (seed 0); their test split is held out


def main(variants=tuple(DATA), out=ASSETS / "toy_eval.json", limit: int = 64):
    torch.set_num_threads(1)  # one thread: two OpenMP threads slow down 10x whenever anything else runs
    result = {}
    for variant in variants:
        layout, n_train = DATA[variant]
        root = toy_dataset(f"data/toy_{layout}", layout=layout, n_train=n_train, n_test=64, seed=0, progress=False)
        result[variant] = {"weights_sha256": weights_digest(TOY_CHECKPOINT, variant),
                           "data": f"{root} (test split, unpaired)", "latent_masks": {}}
        runs = (("trained", False, None), ("untrained", True, None), ("trained_nearest", False, "nearest"))
        for name, untrained, latent_mask in runs:
            summary = evaluate_from_cli(data=root, layout=layout, variant=variant, untrained=untrained, limit=limit,
                                        out=f"runs/toy_eval_{variant}_{name}.json", latent_mask=latent_mask)
            result[variant][name] = summary["toy"]
            result[variant]["latent_masks"][name] = summary["latent_mask"]  # the mode this run sampled with
    if Path(out).is_file():  # keep the other variant's entry (read now: it may have been written meanwhile)
        result = {**json.loads(Path(out).read_text()), **result}
    result = {v: result[v] for v in DATA if v in result}
    tmp = Path(out).with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(out)
    print(f"written {out}")


if __name__ == "__main__":
    main(tuple(sys.argv[1:]) or tuple(DATA))
