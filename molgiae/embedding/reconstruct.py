"""Reconstructions to SDF (:func:`reconstruct_to_sdf`): each conformer decoded from its code,
written through :func:`molgiae.outputs.atomic_output`, with its rmsd and element accuracy.
"""
from __future__ import annotations

import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from molgiae.data.molecules import rdkit_molecule
from molgiae.data.read_ahead import read_positioned
from molgiae.data.record import RecordError
from molgiae.embedding.streaming import DEFAULT_WINDOW_BATCHES, NothingWrittenError, OnError, Progress, stream_results
from molgiae.outputs import atomic_output, refuse_input_as_output

if TYPE_CHECKING:
    from molgiae.api import MolgiaeModel, ReconstructedMolecule


@dataclass
class ReconstructSummary:
    """Counts and scores of one reconstruct run; rmsd in Å over the written molecules."""

    out: Path
    n_written: int = 0
    n_failed: int = 0
    n_records: int = 0
    n_files: int = 0
    rmsd_mean: float = float("nan")
    rmsd_median: float = float("nan")
    element_accuracy_mean: float = float("nan")
    seconds: float = 0.0


def _sdf_molecule(rec: "ReconstructedMolecule"):
    """RDKit molecule of one reconstruction: predicted elements, coords, perceived connectivity
    (no bonds when perception fails), title and ``molgiae_*`` SD properties."""
    from rdkit import Chem, rdBase
    from rdkit.Chem import rdDetermineBonds

    mol = rdkit_molecule(rec.elements, rec.coords)
    block = rdBase.BlockLogs()
    try:
        bonded = Chem.RWMol(mol)
        rdDetermineBonds.DetermineConnectivity(bonded)
        mol = bonded
    except Exception:  # noqa: BLE001 - keep the bond-less molecule
        pass
    finally:
        del block
    mol.UpdatePropertyCache(strict=False)
    mol.SetProp("_Name", rec.record.name)
    mol.SetProp("molgiae_rmsd", f"{rec.rmsd:.6f}")
    mol.SetProp("molgiae_element_accuracy", f"{rec.element_accuracy:.6f}")
    mol.SetProp("molgiae_source", rec.record.source)
    mol.SetProp("molgiae_record", str(rec.record.index))
    if rec.record.hydrogens_added:
        mol.SetProp("molgiae_hydrogens_added", f"{rec.record.hydrogens_added} (the input record had no explicit "
                                                "hydrogens; they were added with RDKit AddHs(addCoords=True))")
    return mol


def reconstruct_to_sdf(
    model: "MolgiaeModel",
    inputs: Sequence[str | Path],
    out: Path,
    canonical: bool = False,
    batch_size: int = 64,
    reader_options: dict | None = None,
    progress: Progress | None = None,
    on_error: OnError | None = None,
    *,
    window_batches: int = DEFAULT_WINDOW_BATCHES,
    read_ahead: bool = False,
) -> ReconstructSummary:
    """Reconstruct every conformer of ``inputs`` from its code and write an SDF (atomic).

    Each molecule: atoms = predicted elements in the input's atom order and pose (or slot order
    and the centred canonical pose when ``canonical``), title = record name, SD properties
    ``molgiae_rmsd`` (Å, against the input, no alignment), ``molgiae_element_accuracy``,
    ``molgiae_source``, ``molgiae_record``. Records the model cannot reconstruct (e.g. more
    than ``model.max_atoms`` atoms) are errors. Raises NothingWrittenError (no file) when none
    could be reconstructed. ``read_ahead``: read in a child process (see :func:`embed_to_hdf5`).
    """
    from rdkit import Chem

    out = Path(out)
    refuse_input_as_output(out, inputs)
    start = time.perf_counter()
    summary = ReconstructSummary(out=out)
    rmsds, accs = array("d"), array("d")
    positioned, sources = read_positioned(inputs, reader_options, read_ahead=read_ahead)
    process = lambda recs: model.reconstruct_records(recs, canonical=canonical)  # noqa: E731
    with atomic_output(out) as tmp:
        writer = Chem.SDWriter(str(tmp))
        try:
            for _, item, rec in stream_results(model, positioned, process,
                                               batch_size=batch_size, reconstruct=True,
                                               window_batches=window_batches, progress=progress,
                                               on_error=on_error):
                summary.n_records += 1
                if isinstance(item, RecordError):
                    summary.n_failed += 1
                    continue
                writer.write(_sdf_molecule(rec))
                rmsds.append(rec.rmsd)
                accs.append(rec.element_accuracy)
        finally:
            writer.close()
        summary.n_files = len(sources)
        summary.n_written = len(rmsds)
        if not rmsds:
            raise NothingWrittenError(f"no conformer could be reconstructed ({summary.n_failed} failed); "
                                      f"nothing written to {out}", summary)
    r = np.frombuffer(rmsds, dtype=np.float64)
    summary.rmsd_mean, summary.rmsd_median = float(r.mean()), float(np.median(r))
    summary.element_accuracy_mean = float(np.frombuffer(accs, dtype=np.float64).mean())
    summary.seconds = time.perf_counter() - start
    return summary
