"""Batch jobs on molecule files: embeddings to HDF5, reconstructions to SDF, shard merging, maps.

One module per idea; this face re-exports their public names (``from molgiae.embedding import
embed_to_hdf5`` keeps working), and modules of the package import the submodules directly:

* :mod:`~molgiae.embedding.streaming`: the streaming driver (:func:`stream_results`), windows of
  size-sorted batches yielded in input order with bounded memory; also used by ``predict``;
* :mod:`~molgiae.embedding.hdf5`: embedding files (:func:`embed_to_hdf5`, layout in its
  docstring) and shard merging (:func:`merge_hdf5`);
* :mod:`~molgiae.embedding.reconstruct`: reconstructions to SDF (:func:`reconstruct_to_sdf`);
* :mod:`~molgiae.embedding.maps`: PCA / t-SNE maps of an embedding file (:func:`embedding_map`).

Every output is written to ``OUT.tmp-<pid>`` next to ``OUT`` and renamed at the end
(:func:`molgiae.outputs.atomic_output`): an exception or Ctrl-C deletes the temporary file, so
there is never a half-written ``OUT``.
"""
from molgiae.embedding.hdf5 import (
    ERROR_DATASETS,
    FORMAT,
    H5_CHUNK_ROWS,
    ROW_DATASETS,
    EmbedSummary,
    MergeError,
    MergeSummary,
    embed_items_to_hdf5,
    embed_to_hdf5,
    merge_hdf5,
)
from molgiae.embedding.maps import embedding_map, project_2d
from molgiae.embedding.reconstruct import ReconstructSummary, reconstruct_to_sdf
from molgiae.embedding.streaming import (
    DEFAULT_MAX_ATOMS,
    DEFAULT_WINDOW_BATCHES,
    NothingWrittenError,
    parse_shard,
    stream_results,
    too_many_atoms,
)

__all__ = [
    "DEFAULT_MAX_ATOMS", "DEFAULT_WINDOW_BATCHES", "ERROR_DATASETS", "FORMAT", "H5_CHUNK_ROWS", "ROW_DATASETS",
    "EmbedSummary", "MergeError", "MergeSummary", "NothingWrittenError", "ReconstructSummary",
    "embed_items_to_hdf5", "embed_to_hdf5", "embedding_map", "merge_hdf5", "parse_shard", "project_2d",
    "reconstruct_to_sdf", "stream_results", "too_many_atoms",
]
