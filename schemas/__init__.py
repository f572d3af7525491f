"""The store contract shared by ``builder`` (writes stores) and ``trainer`` (reads them).

Only this package is imported by both. It defines the record fields and their pickle-free
encoding (:mod:`schemas.record`), the manifest and schema version (:mod:`schemas.manifest`), and
read-only access to LMDB and Zarr stores (:func:`open_store`).
"""

from schemas.manifest import (
    MANIFEST_NAME,
    SCHEMA_VERSION,
    SchemaVersionError,
    StoreError,
    read_manifest,
)
from schemas.record import GRAPH_FIELDS, RecordError, decode_record, encode_record
from schemas.store import Store, compute_hashes, open_store

__all__ = [
    "GRAPH_FIELDS",
    "MANIFEST_NAME",
    "SCHEMA_VERSION",
    "RecordError",
    "SchemaVersionError",
    "Store",
    "StoreError",
    "compute_hashes",
    "decode_record",
    "encode_record",
    "open_store",
    "read_manifest",
]
