"""Checks that a committed notebook renders as it should on GitHub and Colab, and a widget stripper.

    python tools/notebook_hygiene.py notebooks/*.ipynb          # report the problems of each notebook (exit 1 if any)
    python tools/notebook_hygiene.py --strip notebooks/*.ipynb  # remove widget state and widget outputs in place

Execute notebooks for commit with ``OOTD_PROGRESS=0`` (no progress-bar widgets, see ootd_lib/progress.py), e.g.
``OOTD_PROGRESS=0 jupyter nbconvert --to notebook --execute --inplace notebooks/NN_name.ipynb``, then ``--strip``
(removes what any other widget left behind) and check. tests/test_notebooks.py runs the same checks.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

import nbformat

MAX_BYTES = 1_500_000
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
COLAB_BADGE = "https://colab.research.google.com/assets/colab-badge.svg"
COLAB_GUARD = re.compile(r"""if\s+["']google\.colab["']\s+in\s+sys\.modules\s*:""")
PROFILE_LINE = re.compile(r"^\s*PROFILE\s*=", re.M)


def _code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def _outputs(nb):
    return [o for c in _code_cells(nb) for o in c.get("outputs", [])]


# Each check: (name, function(nb, path) -> problem string or None). The names are what the test parametrises over.
def executed_in_order(nb, path):
    counts = [c.get("execution_count") for c in _code_cells(nb) if c.source.strip()]
    if counts != list(range(1, len(counts) + 1)):
        return f"code cells not executed once each, top to bottom in one kernel: execution counts {counts}"
    return None


def no_errors(nb, path):
    errors = [f"{o.get('ename')}: {o.get('evalue')}" for o in _outputs(nb) if o.output_type == "error"]
    return f"error outputs: {errors}" if errors else None


def has_png_figure(nb, path):
    if not any("image/png" in o.get("data", {}) for o in _outputs(nb)):
        return "no PNG figure in any output"
    return None


def no_widget_outputs(nb, path):
    n = sum(WIDGET_VIEW in o.get("data", {}) for o in _outputs(nb))
    return f"{n} widget outputs (progress bars or apps: 'Loading widget…' on GitHub)" if n else None


def no_stderr(nb, path):
    streams = [o.text.strip().splitlines()[0][:100] for o in _outputs(nb)
               if o.output_type == "stream" and o.name == "stderr" and o.text.strip()]
    return f"{len(streams)} stderr outputs, first: {streams[0]!r}" if streams else None


def no_widget_state(nb, path):
    return "widget state in the notebook metadata ('widgets')" if "widgets" in nb.metadata else None


def size_budget(nb, path):
    size = os.path.getsize(path)
    return f"{size / 1e6:.2f} MB, over the {MAX_BYTES / 1e6:.1f} MB budget" if size > MAX_BYTES else None


def colab_badge(nb, path):
    url = "colab.research.google.com/github/"
    ok = any(COLAB_BADGE in c.source and url in c.source and Path(path).name in c.source
             for c in nb.cells if c.cell_type == "markdown")
    return None if ok else f"no Colab badge linking to this notebook ({Path(path).name})"


def colab_install_cell(nb, path):
    ok = any(COLAB_GUARD.search(c.source) and "pip" in c.source for c in _code_cells(nb))
    return None if ok else 'no install cell guarded by `if "google.colab" in sys.modules:`'


def profile_cell(nb, path):
    ok = any(PROFILE_LINE.search(c.source) for c in _code_cells(nb))
    return None if ok else "no cell that sets PROFILE"


CHECKS = {f.__name__: f for f in (executed_in_order, no_errors, has_png_figure, no_widget_outputs, no_stderr,
                                  no_widget_state, size_budget, colab_badge, colab_install_cell, profile_cell)}


def problems(path) -> dict[str, str]:
    """{check name: what is wrong} for one notebook file (empty when it passes everything)."""
    nb = nbformat.read(str(path), as_version=4)
    found = {name: check(nb, path) for name, check in CHECKS.items()}
    return {k: v for k, v in found.items() if v}


def strip_widgets(path) -> int:
    """Remove the widget state (metadata ``widgets``) and every widget output, in place; returns how many outputs
    were removed. The file is rewritten atomically and only when something changed."""
    path = Path(path)
    nb = nbformat.read(str(path), as_version=4)
    removed = 0
    for cell in _code_cells(nb):
        kept = [o for o in cell.get("outputs", []) if WIDGET_VIEW not in o.get("data", {})]
        removed += len(cell.get("outputs", [])) - len(kept)
        cell.outputs = kept
    had_state = nb.metadata.pop("widgets", None) is not None
    if removed or had_state:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        nbformat.write(nb, str(tmp))
        os.replace(tmp, path)
    return removed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebooks", nargs="+", type=Path)
    ap.add_argument("--strip", action="store_true", help="remove widget state and widget outputs in place")
    args = ap.parse_args(argv)
    bad = 0
    for path in args.notebooks:
        if args.strip:
            print(f"{path}: removed {strip_widgets(path)} widget outputs and the widget state")
            continue
        found = problems(path)
        bad += bool(found)
        print(f"{path}: " + ("ok" if not found else "; ".join(f"{k}: {v}" for k, v in found.items())))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
