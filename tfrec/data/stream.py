"""Training interactions streamed from TFRecord shards, never held in memory.

``data.interactions.streaming: true`` (with ``data.split.method: files``):
``data.interactions.path`` names the training shards (a glob of
``tf.train.Example`` files, e.g. from ``python -m tfrec.data.to_tfrecord``);
the validation and test files are small and read into memory as usual.

Two passes over the shards:

* :func:`scan`, once before training: reads every shard in batches and counts
  rows, rows kept, rows skipped (item not in the catalog, empty query) and
  interactions per item (for logQ and the popularity baseline). A record of the
  wrong type or missing a required feature stops it with a one-line error
  naming the shard and record. Query texts are never collected: their number
  grows with the data (a frozen encoder encodes them as they are read).
* :func:`make_dataset`, the training input of one input pipeline (one per
  worker): the shard list split by worker (``InputContext.input_pipeline_id``
  of ``num_input_pipelines``; each worker reads only its shards), shuffled per
  epoch with a seed, several shards read at once (``interleave``), a shuffle
  buffer, batches with ``drop_remainder`` (static shapes), catalog features
  (and cached encodings) gathered in-graph, and ``prefetch``.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from tfrec.data.readers import resolve_path
from tfrec.errors import DataError

log = logging.getLogger("tfrec")
_SCAN_BATCH = 4096
_KINDS = {"bytes_list": tf.string, "int64_list": tf.int64, "float_list": tf.float32}


@dataclass
class StreamInfo:
    """What :func:`scan` learned about the training shards.

    Attributes:
      files: the shards, sorted.
      dtypes: column -> parse dtype (``query``/``item``/``label`` roles in ``roles``).
      roles: ``{"query": column, "item": column, "label": column or None}``.
      rows: records read; kept: records used for training.
      item_counts: int64 [num_items] training interactions per catalog item.
      skipped: reason -> count of records left out.
    """

    files: list[str]
    dtypes: dict[str, tf.DType]
    roles: dict[str, str | None]
    rows: int = 0
    kept: int = 0
    item_counts: np.ndarray = field(default_factory=lambda: np.zeros([0], np.int64))
    skipped: dict[str, int] = field(default_factory=dict)


def _feature_types(file: str, columns: list[str]) -> dict[str, tf.DType]:
    """The parse dtype of each column, from the shard's first record."""
    try:
        first = next(iter(tf.data.TFRecordDataset(file).take(1)), None)
    except tf.errors.OpError as e:
        raise DataError(file, f"not a TFRecord file or truncated ({e.message.splitlines()[0]})") from None
    if first is None:
        raise DataError(file, "no records; expected TFRecord files of tf.train.Example")
    try:
        features = tf.train.Example.FromString(first.numpy()).features.feature
    except Exception:  # noqa: BLE001 - protobuf's DecodeError
        raise DataError(file, "record 1 is not a tf.train.Example", row=1) from None
    types = {}
    for col in columns:
        if col not in features:
            found = ", ".join(sorted(features)[:20]) or "none"
            raise DataError(file, f"missing required feature '{col}' (found: {found})", row=1, column=col)
        types[col] = _KINDS.get(features[col].WhichOneof("kind"), tf.string)
    return types


def _spec(info: StreamInfo) -> dict:
    """``tf.io.parse_example`` spec: the query and item may be missing (counted as skipped), the label may not."""
    spec = {}
    for role, col in info.roles.items():
        if col is None:
            continue
        dtype = info.dtypes[col]
        default = None if role == "label" else ("" if dtype == tf.string else -(2**63))
        spec[col] = tf.io.FixedLenFeature([], dtype, default_value=default)
    return spec


def _as_text(values: tf.Tensor) -> tf.Tensor:
    """string [n] (ids written as integers become their decimal text, as the in-memory readers read them)."""
    return tf.strings.strip(values if values.dtype == tf.string else tf.strings.as_string(values))


def _parse(info: StreamInfo, records: tf.Tensor) -> dict:
    """Serialized examples [n] -> ``query_text`` string [n], ``item_id`` string [n], ``label`` float32 [n]."""
    parsed = tf.io.parse_example(records, _spec(info))
    out = {"query_text": _as_text(parsed[info.roles["query"]]), "item_id": _as_text(parsed[info.roles["item"]])}
    label = info.roles["label"]
    out["label"] = (tf.cast(parsed[label], tf.float32) if label
                    else tf.ones_like(out["item_id"], dtype=tf.float32))
    return out


def _record_error(file: str, info: StreamInfo, records: np.ndarray, first_row: int) -> DataError:
    """Finds the record of a batch that does not parse and names it, its feature and what was expected."""
    want = {tf.string: "one string", tf.int64: "one integer", tf.float32: "one number"}
    for j, record in enumerate(records):
        try:
            tf.io.parse_example(tf.constant([record]), _spec(info))
        except tf.errors.InvalidArgumentError as e:
            text = " ".join(e.message.split())
            key = re.search(r"Key: ([^,]+),", text) or re.search(r"Feature: (\S+)", text)
            col = key.group(1) if key and key.group(1) in info.dtypes else None
            detail = re.sub(r"^.*?Index: \d+\.\s*", "", text).split(" [Op:")[0]
            expected = (f"expected {want[info.dtypes[col]]} as in the first record of {info.files[0]}" if col
                        else f"expected the feature types of the first record of {info.files[0]}")
            return DataError(file, f"record does not parse ({detail}); {expected}", row=first_row + j + 1,
                             column=col)
    return DataError(file, "a record does not parse", row=first_row + 1)


def _catalog_table(catalog) -> tf.lookup.StaticHashTable:
    """item id -> catalog position (int64), -1 when unknown."""
    return tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
        tf.constant(catalog.item_ids), tf.range(len(catalog), dtype=tf.int64)), default_value=-1)


def scan(cfg, catalog, base_dir: str | None = None) -> StreamInfo:
    """One pass over the training shards: counts, skips and per-item interaction counts.

    Args:
      cfg: :class:`tfrec.config.DataConfig`.
      catalog: :class:`tfrec.data.dataset.Catalog`.
    """
    ic = cfg.interactions
    files = resolve_path(ic.path, base_dir)
    roles = {"query": ic.query_column, "item": ic.item_id_column, "label": ic.label_column}
    info = StreamInfo(files, _feature_types(files[0], [c for c in roles.values() if c]), roles)
    if ic.label_column and info.dtypes[ic.label_column] == tf.string:
        raise DataError(files[0], f"feature '{ic.label_column}' holds text; the label must be a number "
                        "(int64_list or float_list)", row=1, column=ic.label_column)
    table = _catalog_table(catalog)
    counts = np.zeros([len(catalog)], np.int64)
    skipped = {"unknown_items": 0, "empty_queries": 0}
    bar = tqdm(files, desc="scanning training shards", unit="shard", mininterval=2.0, leave=False,
               disable=True if len(files) < 2 or not log.isEnabledFor(logging.INFO) else None)
    for file in bar:
        types = _feature_types(file, [c for c in roles.values() if c])  # every shard has the columns...
        for col, dtype in types.items():  # ...of the same types
            if dtype != info.dtypes[col]:
                raise DataError(file, f"feature '{col}' is {dtype.name} here but {info.dtypes[col].name} in "
                                f"{files[0]}; write every shard with the same types", row=1, column=col)
        first_row = 0
        try:
            for records in tf.data.TFRecordDataset(file).batch(_SCAN_BATCH):
                try:
                    parsed = _parse(info, records)
                except tf.errors.InvalidArgumentError:
                    raise _record_error(file, info, records.numpy(), first_row) from None
                pos = table.lookup(parsed["item_id"]).numpy()
                empty = (tf.strings.length(parsed["query_text"]) == 0).numpy()
                unknown = pos < 0
                if unknown.any() and not cfg.skip_unknown_items:
                    j = int(np.argmax(unknown))
                    raise DataError(file, f"item '{parsed['item_id'][j].numpy().decode()}' is not in the catalog "
                                    f"{cfg.items.path} (set data.skip_unknown_items: true to skip and count such "
                                    "rows)", row=first_row + j + 1, column=ic.item_id_column)
                if (empty & ~unknown).any() and not cfg.skip_empty_queries:
                    j = int(np.argmax(empty & ~unknown))
                    raise DataError(file, "empty query text (set data.skip_empty_queries: true to skip and count "
                                    "such rows)", row=first_row + j + 1, column=ic.query_column)
                keep = ~unknown & ~empty
                skipped["unknown_items"] += int(unknown.sum())
                skipped["empty_queries"] += int((empty & ~unknown).sum())
                counts += np.bincount(pos[keep], minlength=len(catalog))
                first_row += len(pos)
        except tf.errors.DataLossError as e:
            raise DataError(file, f"not a TFRecord file or truncated ({e.message.splitlines()[0]})") from None
        info.rows += first_row
    info.item_counts, info.kept = counts, int(counts.sum())
    info.skipped = {k: v for k, v in skipped.items() if v}
    log.info("data: streaming %d training shards: %d records, %d kept", len(files), info.rows, info.kept)
    return info


def make_dataset(info: StreamInfo, catalog, item_probability: np.ndarray, batch_size: int, seed: int,
                 input_context: tf.distribute.InputContext | None = None, query_cache=None, item_cache=None,
                 skip_batches: int = 0, shuffle_buffer: int = 50_000, cycle_length: int = 4) -> tf.data.Dataset:
    """The endless, shuffled training stream of one input pipeline, as ``pipeline.training_features`` batches.

    Args:
      info: from :func:`scan`.
      catalog: :class:`tfrec.data.dataset.Catalog`; ``item_probability``: float32 [num_items].
      batch_size: the global batch; each pipeline batches its replicas' share
        (``input_context.get_per_replica_batch_size``).
      input_context: from ``strategy.distribute_datasets_from_function``; None = one pipeline.
      query_cache / item_cache: :class:`tfrec.data.pipeline.TextCache` of a frozen encoder, or None (raw text).
      skip_batches: batches already trained on (resume).
    Returns:
      A dataset of dicts: ``query_text`` string [b] (or ``query_text_encoding`` float32 [b, h]),
      ``item_id`` / ``item_text`` / ``item_<column>`` string [b] (or ``item_text_encoding``),
      ``item_position`` int64 [b] (catalog row), ``item_probability`` and ``label`` float32 [b]; b static.
    """
    mine = info.files  # this input pipeline's shards: worker i of N reads shards i, i + N, ...
    if input_context is not None:
        pipelines, me = input_context.num_input_pipelines, input_context.input_pipeline_id
        if pipelines > len(info.files):
            raise DataError(info.files[0], f"{pipelines} workers read the training shards but there are only "
                            f"{len(info.files)}; write at least one shard per worker (python -m "
                            "tfrec.data.to_tfrecord --shards N)")
        mine = info.files[me::pipelines]
        batch_size = input_context.get_per_replica_batch_size(batch_size)
        log.info("stream: input pipeline %d of %d reads %d of %d shards (%s)", me, pipelines, len(mine),
                 len(info.files), ", ".join(Path(f).name for f in mine[:4]) + (", ..." if len(mine) > 4 else ""))
    n_files = len(mine)
    files = tf.data.Dataset.from_tensor_slices(mine).shuffle(n_files, seed=seed, reshuffle_each_iteration=True)
    records = files.interleave(tf.data.TFRecordDataset, cycle_length=min(cycle_length, n_files), block_length=64,
                               num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    table = _catalog_table(catalog)

    def parse_and_keep(serialized: tf.Tensor) -> dict:
        """[n] records -> the kept ones' ``query_text``, ``item_position`` and ``label`` (vectorised)."""
        parsed = _parse(info, serialized)
        pos = table.lookup(parsed["item_id"])
        keep = tf.logical_and(pos >= 0, tf.strings.length(parsed["query_text"]) > 0)  # as scan() counted
        return {"query_text": tf.boolean_mask(parsed["query_text"], keep),
                "item_position": tf.boolean_mask(pos, keep), "label": tf.boolean_mask(parsed["label"], keep)}

    examples = records.batch(1024).map(parse_and_keep, num_parallel_calls=tf.data.AUTOTUNE,
                                       deterministic=True).unbatch()
    # Repeated last, so an epoch is every kept record of this pipeline's shards once (less the last partial batch).
    batches = examples.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True).batch(
        batch_size, drop_remainder=True).repeat()
    if skip_batches:
        batches = batches.skip(skip_batches)

    item_ids = tf.constant(catalog.item_ids)
    item_text = (tf.constant(item_cache.lookup(catalog.texts)) if item_cache is not None
                 else tf.constant(catalog.texts))
    categorical = {col: tf.constant(values) for col, values in catalog.categorical.items()}
    probability = tf.constant(item_probability, tf.float32)
    query_rows = None
    if query_cache is not None:
        query_rows = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
            tf.constant(query_cache.texts), tf.range(len(query_cache.texts), dtype=tf.int64)), default_value=-1)
        query_matrix = tf.constant(query_cache.matrix)

    def features(batch: dict) -> dict:
        pos = batch["item_position"]
        out = {}
        if query_rows is not None:
            out["query_text_encoding"] = tf.gather(query_matrix, query_rows.lookup(batch["query_text"]))
        else:
            out["query_text"] = batch["query_text"]
        out["item_id"] = tf.gather(item_ids, pos)
        out["item_position"] = pos
        out["item_text_encoding" if item_cache is not None else "item_text"] = tf.gather(item_text, pos)
        for col, values in categorical.items():
            out[f"item_{col}"] = tf.gather(values, pos)
        out["item_probability"] = tf.gather(probability, pos)
        out["label"] = batch["label"]
        return out

    return batches.map(features, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(tf.data.AUTOTUNE)
