"""The store contract shared by ``builder`` (writes stores) and ``trainer`` (reads them).

Only this package is imported by both. It defines the record fields and their pickle-free
encoding (:mod:`schemas.record`), the manifest and schema version (:mod:`schemas.manifest`), and
read-only access to LMDB and Zarr stores (:func:`open_store`).

Stores are untrusted input (they travel between people), and reading one never crashes, hangs,
runs code or returns silently wrong data: damage raises :class:`StoreError` or
:class:`RecordError` naming the store. Every record carries a CRC-32 checked on each read and
its header is never trusted (:mod:`schemas.record`); LMDB files are checked before liblmdb
touches them (:mod:`schemas.lmdb_file`); Zarr metadata is checked from its JSON before Zarr
decodes anything and chunks carry a CRC-32C (:mod:`fingerprint_pretrain.schemas.zarr_meta`,
:mod:`schemas.zarr_store`); the manifest carries a digest of what the records mean
(:mod:`schemas.manifest`). Stores written before these checks still read, without them: the
additions are optional keys, and content hashes are unchanged.

An LMDB store is made of parts (schema 2.0, :mod:`schemas.lmdb_store`): ``graphs.mdb`` and one
``labels-<set>.mdb`` per label set, each listed in the manifest with its size and sha256; a
label set whose part is absent is listed (``store.available_descriptors``) but not readable
(``store.descriptor_names``), and asking for it names how to get it. Single-file stores
(schema 1.0, one ``data.mdb``) still read.
"""

from fingerprint_pretrain.schemas.backends import open_store
from fingerprint_pretrain.schemas.manifest import (
    MANIFEST_NAME,
    SCHEMA_VERSION,
    SchemaVersionError,
    StoreError,
    read_manifest,
)
from fingerprint_pretrain.schemas.record import (
    GRAPH_FIELDS,
    RecordError,
    decode_record,
    encode_record,
)
from fingerprint_pretrain.schemas.store import Store, compute_hashes

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
