"""The Parquet store of sentences, pseudo-labels, rejects, projections and runs.

``Store(root)`` (layout, manifests, runs), ``RoundWriter`` (atomic, resumable, streaming writes
of one round), and the Arrow schemas (:mod:`xner_ray.store.schema`).
"""

from xner_ray.store.schema import (PROJECTIONS, PSEUDO_LABELS, REJECTS, RUNS, SCHEMA_VERSION,
                                   SENTENCES, TABLES, batch_to_table, describe)
from xner_ray.store.store import Store
from xner_ray.store.writer import RoundWriter

__all__ = ["Store", "RoundWriter", "SENTENCES", "PSEUDO_LABELS", "REJECTS", "RUNS", "PROJECTIONS",
           "TABLES", "SCHEMA_VERSION", "batch_to_table", "describe"]
