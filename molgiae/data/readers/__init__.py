"""Readers: every supported molecule file becomes a stream of records.

``read_records(path)`` yields one :class:`ConformerRecord` per conformer in the file, or a
:class:`RecordError` for each one that could not be read or whose geometry is unusable
(:func:`check_geometry`). Bad input never raises: a whole-file problem (missing file,
unknown extension, empty file, corrupt or truncated compressed stream) is a
``RecordError`` too. Readers know nothing of models and never import torch; RDKit and ASE
are imported on first use.

Conventions
-----------
* ``source`` is ``str(path)`` as given; ``index`` is the record's 0-based position in
  that file, and a bad record still consumes its index, so good records keep their true
  positions. Whole-file errors have ``index = -1``; a truncated/corrupt stream is
  reported at the index where reading stopped, after the records read before it.
* QM9 ``.tar``/``.tar.gz``/``.tgz``/``.tar.bz2``/``.tar.xz`` archives: members ending in
  ``.xyz``/``.extxyz`` are read in sorted name order; ``source`` is the archive path and
  ``index`` runs over the records of all members (for QM9 archives: the member's position);
  errors name the member in their reason.
* ``.smi``/``.csv``: with ``num_conformers = k`` the molecule on the m-th data row (0-based,
  comments/header not counted) has record indices ``m*k .. m*k+k-1``, whatever happens to
  other rows; an invalid or unembeddable row is one error at index ``m*k``. If embedding
  gives fewer than k conformers, the missing indices are skipped. Conformers are embedded
  with ETKDGv3, ``randomSeed = seed + line_number`` (1-based physical line), then MMFF.
* ``.xyz``/``.extxyz``: frames are split on their atom-count lines here and each frame is
  parsed by ASE's extxyz reader, so reading is streaming and a bad frame does not end
  the file (``ase.io.iread`` scans the whole file before yielding anything). A frame whose
  count line is unreadable, too small (the line after its atoms is another atom line) or too
  large (one of its atom lines is a count line) is an error, and reading resumes at the next
  atom-count line. A file is read as original QM9 ``dsgdb9nsd_*.xyz`` (``*^`` and ``E``
  exponents both accepted) only when its first frame has that structure: ``gdb <index>`` and
  the 15 property values on line 2, 5-field atom lines; a plain comment starting ``gdb``
  (``gdb_1``) stays plain xyz.
* ``.sdf``/``.sd``/``.mol``: blocks are split on ``$$$$`` here and parsed one by one by
  RDKit (sanitised; if that fails, unsanitised), so a malformed block is one error and
  reading goes on. A conformer flagged 2-D by its molblock (or not flagged 3-D) is an error
  ("no 3-D coordinates"); one flagged 3-D is trusted, so planar molecules at z = 0 are kept.
  Implicit hydrogens of a sanitised block with bonds are added with 3-D coordinates
  (``AddHs(addCoords=True)``; ``ConformerRecord.hydrogens_added`` says how many). A block with
  no bond block gets its SMILES perceived from the geometry (no hydrogens are added to it).
* GEOM (:mod:`molgiae.data.geom`): a ``.msgpack`` file, or a directory holding
  ``summary_*.json`` (or such a summary file) as a GEOM ``rdkit_folder``, whose pickles are
  unpickled (that executes code from the files: trusted data only). One record per conformer,
  name and smiles = the GEOM SMILES. An ``.npz`` with ``format_version``
  ``molgiae-conformers-npz-*`` is a conformer-ensemble file (:func:`molgiae.data.ensemble_npz.read_ensemble_npz`).
* Geometry: every record passes :func:`check_geometry`. Its all-z=0 ("2-D drawing") test
  applies to SMILES input only; SD/MOL input has its molblock's dimension flag, and npz, xyz,
  tar and other ASE formats are 3-D by construction (planar/linear molecules there often lie
  exactly in z = 0).

Layout: one module per format family (:mod:`~molgiae.data.readers.sdf`,
:mod:`~molgiae.data.readers.xyz` with tar archives, :mod:`~molgiae.data.readers.npz`,
:mod:`~molgiae.data.readers.smiles`, :mod:`~molgiae.data.readers.ase_formats`; GEOM is
:mod:`molgiae.data.geom`), shared pieces in :mod:`~molgiae.data.readers.common`, and the public
API with the dispatch by suffix in :mod:`~molgiae.data.readers.dispatch`; this face re-exports it.
"""
from molgiae.data.readers.common import (
    EMPTY_FILE,
    QM9_PROPERTY_NAMES,
    TRUNCATED_ARCHIVE,
    TRUNCATED_GZIP,
    Item,
)
from molgiae.data.readers.dispatch import SUPPORTED_SUFFIXES, iter_records, read_records, records_only

__all__ = [
    "EMPTY_FILE", "QM9_PROPERTY_NAMES", "SUPPORTED_SUFFIXES", "TRUNCATED_ARCHIVE", "TRUNCATED_GZIP", "Item",
    "iter_records", "read_records", "records_only",
]
