"""Reading molecules: record type, readers per format, splits, batching."""
from molgiae.data.record import ConformerRecord, RecordError, check_geometry

__all__ = ["ConformerRecord", "RecordError", "check_geometry"]
