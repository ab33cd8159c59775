"""Every committed notebook renders on GitHub and Colab: executed top to bottom, no errors, a figure, no widgets or
widget state, no stderr, under 1.5 MB, with a Colab badge, a Colab-only install cell and a PROFILE cell.

The checks live in tools/notebook_hygiene.py (also a script: ``--strip`` removes widget state and outputs). The first
tests run them on small hand-made notebooks, so each check is known to catch its defect.
"""

import copy
import importlib.util
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
_spec = importlib.util.spec_from_file_location("notebook_hygiene", REPO / "tools" / "notebook_hygiene.py")
hygiene = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(hygiene)

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="


def good_notebook(name="05_example.ipynb"):
    v4 = nbformat.v4
    cells = [
        v4.new_markdown_cell("# 05 · Example\n\n[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
                             f"(https://colab.research.google.com/github/owner/repo/blob/main/notebooks/{name})"),
        v4.new_code_cell('import sys, subprocess\nif "google.colab" in sys.modules:\n'
                         '    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "ootd-lib"], check=True)',
                         execution_count=1),
        v4.new_code_cell('import os\nPROFILE = os.environ.get("OOTD_PROFILE", "toy")', execution_count=2),
        v4.new_code_cell("plot()", execution_count=3, outputs=[
            v4.new_output("stream", name="stdout", text="done\n"),
            v4.new_output("display_data", data={"image/png": PNG, "text/plain": "<Figure>"})]),
        v4.new_code_cell("", execution_count=None),  # an empty cell is never executed: fine
    ]
    return v4.new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}})


def write(tmp_path, nb, name="05_example.ipynb"):
    path = tmp_path / name
    nbformat.write(nb, str(path))
    return path


def widget_output():
    return nbformat.v4.new_output("display_data", data={hygiene.WIDGET_VIEW: {"model_id": "abc", "version_major": 2,
                                                                           "version_minor": 0},
                                                         "text/plain": "Loading weights: 100%"})


def _defect(name):
    """A copy of the good notebook with exactly the defect that check ``name`` is about."""
    nb = good_notebook()
    plot = nb.cells[3]
    if name == "executed_in_order":
        nb.cells[2].execution_count = 5
    elif name == "no_errors":
        plot.outputs.append(nbformat.v4.new_output("error", ename="ValueError", evalue="boom", traceback=[]))
    elif name == "has_png_figure":
        plot.outputs = plot.outputs[:1]
    elif name == "no_widget_outputs":
        plot.outputs.append(widget_output())
    elif name == "no_stderr":
        plot.outputs.append(nbformat.v4.new_output("stream", name="stderr", text="UserWarning: torchvision\n"))
    elif name == "no_widget_state":
        nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    elif name == "size_budget":
        plot.outputs[1]["data"]["image/png"] = "A" * (hygiene.MAX_BYTES + 1)
    elif name == "colab_badge":
        nb.cells[0].source = "# 05 · Example"
    elif name == "colab_install_cell":
        nb.cells[1].source = "import sys, subprocess\nsubprocess.run(['pip', 'install', 'ootd-lib'])"
    elif name == "profile_cell":
        nb.cells[2].source = "import os"
    return nb


def test_a_clean_notebook_passes_every_check(tmp_path):
    assert hygiene.problems(write(tmp_path, good_notebook())) == {}


@pytest.mark.parametrize("check", list(hygiene.CHECKS))
def test_each_check_catches_its_defect_and_only_it(tmp_path, check):
    assert list(hygiene.problems(write(tmp_path, _defect(check)))) == [check]


def test_strip_widgets_removes_state_and_widget_outputs_only(tmp_path):
    nb = good_notebook()
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {"abc": {}}}}
    nb.cells[3].outputs.insert(1, widget_output())
    path = write(tmp_path, nb)
    assert set(hygiene.problems(path)) == {"no_widget_outputs", "no_widget_state"}
    assert hygiene.strip_widgets(path) == 1
    stripped = nbformat.read(str(path), as_version=4)
    assert hygiene.problems(path) == {} and stripped.cells[3].outputs == good_notebook().cells[3].outputs
    before = path.read_bytes()
    assert hygiene.strip_widgets(path) == 0 and path.read_bytes() == before  # nothing to do: file untouched
    assert hygiene.main(["--strip", str(path)]) == 0 and hygiene.main([str(path)]) == 0
    assert hygiene.main([str(write(tmp_path, _defect("no_stderr"), "bad.ipynb"))]) == 1


def test_there_are_ten_committed_notebooks():
    assert [p.name[:3] for p in NOTEBOOKS] == [f"{i:02d}_" for i in range(10)]


@pytest.mark.parametrize("check", list(hygiene.CHECKS))
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebook(notebook, check):
    nb = nbformat.read(str(notebook), as_version=4)
    problem = hygiene.CHECKS[check](nb, notebook)
    assert problem is None, f"{notebook.name}: {problem}"
