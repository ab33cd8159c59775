"""Measure the shipped toy checkpoint and write assets/toy_eval.json (read by tests/test_toy_checkpoint.py).

    python assets/make_toy_eval.py            # both variants (~15 min per variant, 1 thread)
    python assets/make_toy_eval.py dc         # one variant: updates its entry, keeps the other
    python assets/make_toy_eval.py --jobs 2   # the runs in 2 processes of 1 thread each (seeded: the same numbers)

Both variants on 64 held-out unpaired pairs per category (20 UniPC steps, guidance 2.0, seed 0): the trained UNets and
the same architecture untrained (same VAE and encoders), each with the same model given another test garment as the
baseline that costs no training; then the trained model once more with the released latent mask (``nearest``), beside
the checkpoint's own (``any``, recorded in its ``model_index.json``). Every number comes from ``ootd evaluate``
(``ootd_lib.evaluation``); the file also records a digest of the weights it was measured on (each variant's UNets,
the VAE and the latent mask: ``models.weights_digest``), so a retrained checkpoint must be measured again.
"""

import argparse
import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from ootd_lib.config import TOY_CHECKPOINT
from ootd_lib.app import evaluate_from_cli
from ootd_lib.models import weights_digest
from ootd_lib.toydata import toy_dataset

ASSETS = Path(__file__).resolve().parent
DATA = {"hd": ("vitonhd", 1024), "dc": ("dresscode", 512)}  # the training wardrobes (seed 0); their test split is held out
RUNS = {"trained": (False, None), "untrained": (True, None), "trained_nearest": (False, "nearest")}  # untrained, mask


def measure(variant: str, run: str, root: Path, limit: int = 64) -> tuple[dict, str]:
    """One run of one variant through ``ootd evaluate``: its per-category toy metrics and the latent mask it used."""
    torch.set_num_threads(1)  # one thread: two OpenMP threads slow down 10x whenever anything else runs
    untrained, latent_mask = RUNS[run]
    summary = evaluate_from_cli(data=root, layout=DATA[variant][0], variant=variant, untrained=untrained, limit=limit,
                                out=f"runs/toy_eval_{variant}_{run}.json", latent_mask=latent_mask)
    return summary["toy"], summary["latent_mask"]


def main(variants=tuple(DATA), out=ASSETS / "toy_eval.json", jobs: int = 1, limit: int = 64):
    result, runs = {}, []
    for variant in variants:  # the wardrobes are written here, before any run starts
        layout, n_train = DATA[variant]
        root = toy_dataset(f"data/toy_{layout}", layout=layout, n_train=n_train, n_test=64, seed=0, progress=False)
        result[variant] = {"weights_sha256": weights_digest(TOY_CHECKPOINT, variant),
                           "data": f"{root} (test split, unpaired)", "latent_masks": {}}
        runs += [(variant, run, root, limit) for run in RUNS]
    if jobs == 1:
        measured = [measure(*r) for r in runs]
    else:  # forked workers: the parent has run no torch op yet, so no thread pool is copied half-initialised
        with ProcessPoolExecutor(jobs) as pool:
            measured = list(pool.map(measure, *zip(*runs)))
    for (variant, run, _, _), (toy, latent_mask) in zip(runs, measured):
        result[variant][run] = toy
        result[variant]["latent_masks"][run] = latent_mask  # the mode this run sampled with
    if Path(out).is_file():  # keep the other variant's entry (read now: it may have been written meanwhile)
        result = {**json.loads(Path(out).read_text()), **result}
    result = {v: result[v] for v in DATA if v in result}
    tmp = Path(out).with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(out)
    print(f"written {out}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("variants", nargs="*", help=f"any of {list(DATA)} (default: both)")
    p.add_argument("--jobs", type=int, default=1, help="processes, 1 thread each (default 1)")
    a = p.parse_args()
    if any(v not in DATA for v in a.variants) or a.jobs < 1:
        p.error(f"variants must be among {list(DATA)} and --jobs >= 1, got {a.variants} and {a.jobs}")
    main(tuple(a.variants) or tuple(DATA), jobs=a.jobs)
