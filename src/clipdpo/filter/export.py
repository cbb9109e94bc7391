"""The pairs as a dataset TRL's DPOTrainer loads as it is: Parquet with Hugging Face `datasets`
features, the images embedded as `Image` features (their encoded bytes), TRL's conversational
preference format:

    images    list<Image>                         [the pair's image]
    prompt    [{"role": "user", "content": ...}]  TRL inserts the image placeholder itself
    chosen    [{"role": "assistant", "content": ...}]
    rejected  [{"role": "assistant", "content": ...}]
    image_id, kind                                 provenance

    datasets.load_dataset("parquet", data_files="s3://.../pairs/export/trl/*.parquet")

Images are embedded as stored, except those that `datasets` and a transformers processor would read otherwise
than the project's decoder (16-bit and float images, which they turn white): those as a PNG of what
`clipdpo.images.decode_image` shows (`viewable_bytes`).

The `huggingface` schema metadata is what `datasets` reads to decode `images` into PIL images;
written here with pyarrow alone, so the filter image needs no `datasets` (features JSON of
datasets >= 4).
"""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from clipdpo.images import viewable_bytes

_STRING = {"dtype": "string", "_type": "Value"}
_MESSAGES = {"feature": {"role": _STRING, "content": _STRING}, "_type": "List"}
FEATURES = {
    "images": {"feature": {"_type": "Image"}, "_type": "List"},
    "prompt": _MESSAGES,
    "chosen": _MESSAGES,
    "rejected": _MESSAGES,
    "image_id": _STRING,
    "kind": _STRING,
}
MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
TRL_SCHEMA = pa.schema(
    [
        ("images", pa.list_(IMAGE)),
        ("prompt", pa.list_(MESSAGE)),
        ("chosen", pa.list_(MESSAGE)),
        ("rejected", pa.list_(MESSAGE)),
        ("image_id", pa.string()),
        ("kind", pa.string()),
    ],
    metadata={"huggingface": json.dumps({"info": {"features": FEATURES}})},
)


def _one_each(values: pa.Array) -> pa.Array:
    """Each value as a one-element list."""
    return pa.ListArray.from_arrays(pa.array(range(len(values) + 1), pa.int32()), values)


def _messages(role: str, texts: pa.Array) -> pa.Array:
    roles = pa.array([role] * len(texts), pa.string())
    return _one_each(pa.StructArray.from_arrays([roles, texts], fields=list(MESSAGE)))


def _chunk(column) -> pa.Array:
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def trl_table(pairs: pa.Table, images: pa.Table) -> pa.Table:
    """Pairs (PAIRS schema) joined with their images (`image_id`, `image` bytes) in TRL's format."""
    image_ids = _chunk(pairs.column("image_id"))
    where = pc.index_in(image_ids, value_set=_chunk(images.column("image_id")))
    if where.null_count:
        missing = sorted(set(pc.filter(image_ids, pc.is_null(where)).to_pylist()))
        raise ValueError(f"TRL export: no image bytes for image_id(s) {missing[:5]} in the pairs' image shard(s)")
    stored = _chunk(images.column("image"))
    viewable = pa.array([viewable_bytes(stored[i].as_py()) for i in range(len(stored))], pa.binary())  # once per image
    data = pc.take(viewable, where)
    embedded = pa.StructArray.from_arrays([data, image_ids], fields=list(IMAGE))
    columns = [
        _one_each(embedded),
        _messages("user", _chunk(pairs.column("prompt"))),
        _messages("assistant", _chunk(pairs.column("chosen"))),
        _messages("assistant", _chunk(pairs.column("rejected"))),
        image_ids,
        _chunk(pairs.column("kind")),
    ]
    return pa.Table.from_arrays(columns, schema=TRL_SCHEMA)


def read_pair_images(storage, pairs: pa.Table) -> pa.Table:
    """`image_id` + `image` bytes of every images shard the pairs point at (their `image_uri`)."""
    uris = sorted(set(pairs.column("image_uri").drop_null().to_pylist()))
    tables = [pq.read_table(io.BytesIO(storage.read_bytes(uri)), columns=["image_id", "image"]) for uri in uris]
    empty = pa.table({"image_id": pa.array([], pa.string()), "image": pa.array([], pa.binary())})
    return pa.concat_tables(tables) if tables else empty


def trl_parquet(pairs: pa.Table, images: pa.Table) -> bytes:
    """One Parquet file (bytes) of `trl_table`: what the filter writes per shard under export/trl/."""
    sink = io.BytesIO()
    pq.write_table(trl_table(pairs, images), sink, compression="zstd")
    return sink.getvalue()
