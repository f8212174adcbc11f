"""``notebooks/walkthrough.ipynb`` runs for real, on small data, and shows its plots and anomalies.

The notebook is executed with ``nbclient`` in a fresh kernel, in a temporary directory, with its
``parameters`` cell replaced by small-data settings (profile ``test``, 2 hosts, 2 days, 3 epochs).
The kernel is this interpreter (the project's virtualenv): its kernelspec is written into a
temporary directory and only that directory is searched, so a ``python3`` kernel registered
elsewhere on the machine (user or system Jupyter dirs) can never be picked up instead.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

nbformat = pytest.importorskip("nbformat", reason="nbformat not installed: pip install -e '.[dev]'")
nbclient = pytest.importorskip("nbclient", reason="nbclient not installed: pip install -e '.[dev]'")
pytest.importorskip("ipykernel", reason="ipykernel not installed: pip install -e '.[dev]'")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "walkthrough.ipynb"
KERNEL_NAME = "python3"
CELL_TIMEOUT_S = 300


def small_parameters(work_dir: Path) -> str:
    overrides = [
        "generate.hosts=2",
        "generate.days=2",
        "train.epochs=3",
        "train.patience=2",
        "spark.driver_memory=1g",
    ]
    return f"WORK_DIR = {str(work_dir)!r}\nPROFILE = 'test'\nOVERRIDES = {overrides!r}\n"


def parameters_cell(nb: Any) -> Any:
    for cell in nb.cells:
        if cell.cell_type == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            return cell
    raise AssertionError("the notebook has no code cell tagged 'parameters'")


def kernel_manager(kernels_dir: Path) -> Any:
    """A kernel manager for ``python3`` = this interpreter, looking only in ``kernels_dir``."""
    from ipykernel.kernelspec import write_kernel_spec
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager

    write_kernel_spec(kernels_dir / KERNEL_NAME)  # argv: [sys.executable, "-m", "ipykernel_launcher", ...]
    specs = KernelSpecManager(kernel_dirs=[str(kernels_dir)], ensure_native_kernel=False)
    km = AsyncKernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=specs)
    assert Path(km.kernel_spec.argv[0]) == Path(sys.executable), km.kernel_spec.argv
    return km


def outputs_of(nb: Any) -> list[Any]:
    return [out for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])]


def test_committed_notebook_has_no_outputs() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"cell {cell.get('id')} has stored outputs"
    assert parameters_cell(nb).source.lstrip().startswith("WORK_DIR")


@pytest.mark.slow
@pytest.mark.spark
def test_walkthrough_runs_and_shows_plots(tmp_path: Path) -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    parameters_cell(nb).source = small_parameters(tmp_path / "work")
    # Which interpreter ran the notebook: must be this one (the virtualenv), not some other python3.
    nb.cells.append(nbformat.v4.new_code_cell("import sys\nprint(sys.prefix)", id="which-python"))
    run_dir = tmp_path / "cwd"
    run_dir.mkdir()

    client = nbclient.NotebookClient(
        nb,
        km=kernel_manager(tmp_path / "kernels"),
        kernel_name=KERNEL_NAME,
        timeout=CELL_TIMEOUT_S,
        startup_timeout=120,
        allow_errors=False,
        resources={"metadata": {"path": str(run_dir)}},
    )
    try:
        client.execute(cleanup_kc=True)
    except nbclient.exceptions.CellExecutionError as exc:
        pytest.fail(f"a notebook cell failed:\n{exc}")

    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code_cells), "a code cell did not run"
    errors = [out for out in outputs_of(nb) if out.output_type == "error"]
    assert not errors, errors

    assert nb.cells[-1].outputs[0]["text"].strip() == sys.prefix

    images = [out for out in outputs_of(nb) if "image/png" in out.get("data", {})]
    # training curve, timelines, histogram, and PR/ROC when both labels occur
    assert len(images) >= 3, f"expected the plots inline, got {len(images)} image(s)"

    anomalies_cell = next(c for c in code_cells if c.get("id") == "anomalies")
    html = "".join(out.get("data", {}).get("text/html", "") for out in anomalies_cell.outputs)
    assert "<table" in html and "explanation" in html and "x_threshold" in html, html[:500]

    # it ran where it was told: everything under the work dir, nothing in the checkout
    work = tmp_path / "work"
    assert (work / "model" / "model.json").is_file()
    assert (work / "lake" / "anomalies" / "_delta_log").is_dir()
