"""From the config's files to a catalog and train/validation/test examples.

Splits: ``leave_last``, ``time`` and ``random`` split one interactions file;
``files`` reads the training, validation and test sets from three files (with
``interactions.streaming`` the training one is left to :mod:`tfrec.data.stream`
and only counted here). Everything skipped is counted in
:attr:`RetrievalData.skipped` (logged, and written to ``eval.json``);
everything else that is wrong is a one-line :class:`~tfrec.errors.DataError`
naming file, row and column.
"""

from __future__ import annotations

import logging
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from tfrec.config import DataConfig
from tfrec.data.readers import Table, as_float, as_text, concat_tables, read_table
from tfrec.errors import DataError

if TYPE_CHECKING:
    from tfrec.data.stream import StreamInfo

log = logging.getLogger("tfrec")
TEXT_SEPARATOR = ". "
HISTORY_SEPARATOR = "; "


@dataclass
class Catalog:
    """The items, in a fixed order (row ``i`` of every item matrix is ``item_ids[i]``).

    Attributes:
      item_ids: [num_items] unique ids.
      texts: [num_items] the text columns joined.
      categorical: column -> [num_items] values.
      titles: [num_items] a short display text (the first text column).
    """

    item_ids: list[str]
    texts: list[str]
    categorical: dict[str, list[str]]
    titles: list[str]
    history_texts: list[str]
    position: dict[str, int] = field(default_factory=dict)

    def __post_init__(self):
        self.position = {item: i for i, item in enumerate(self.item_ids)}

    def __len__(self) -> int:
        return len(self.item_ids)


@dataclass
class Examples:
    """One split: parallel lists, one entry per (query, item) interaction."""

    query_text: list[str]
    item_id: list[str]
    user_id: list[str]
    label: np.ndarray  # float32 [n]; ones when there is no label column
    timestamp: np.ndarray  # float64 [n]; file order when there is no timestamp column
    # int64 [n, query_history_items]: the user's previous items as catalog rows, most recent first, -1 padded;
    # None when queries are not built from history.
    history: np.ndarray | None = None
    weight: np.ndarray | None = None  # float32 [n], >= 0: data.interactions.sample_weight_column, if set
    # float32 [n, query_history_items]: the label of each of those past interactions (a rating the user gave
    # before this one; 0 where history is padding). Known at the time of the interaction, so no leakage.
    history_label: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.item_id)

    def take(self, idx) -> "Examples":
        idx = list(idx)
        return Examples([self.query_text[i] for i in idx], [self.item_id[i] for i in idx],
                        [self.user_id[i] for i in idx], self.label[idx], self.timestamp[idx],
                        None if self.history is None else self.history[idx],
                        None if self.weight is None else self.weight[idx],
                        None if self.history_label is None else self.history_label[idx])


@dataclass
class RetrievalData:
    catalog: Catalog
    train: Examples
    validation: Examples
    test: Examples
    counts: dict[str, int]
    skipped: dict[str, int]
    stream: StreamInfo | None = None  # data.interactions.streaming: the training shards (train is then empty)
    cold_items: np.ndarray | None = None  # int64 catalog rows held out of training (hold_out_cold_items)

    @property
    def num_train(self) -> int:
        return self.stream.kept if self.stream is not None else len(self.train)

    def item_counts(self) -> np.ndarray:
        """int64 [num_items]: training interactions per catalog item."""
        if self.stream is not None:
            return self.stream.item_counts
        counts = Counter(self.train.item_id)
        return np.array([counts.get(i, 0) for i in self.catalog.item_ids], dtype=np.int64)

    def item_probability(self) -> np.ndarray:
        """float32 [num_items]: each item's share of training interactions (for logQ).

        Items never seen in training get half the smallest observed count so
        their log stays finite.
        """
        freq = self.item_counts().astype(np.float64)
        freq[freq == 0] = 0.5
        return (freq / freq.sum()).astype(np.float32)

    def seen_items(self, split: str = "validation") -> dict[str, set[str]]:
        """Each user's items known before ``split`` is asked: the training items for "validation"; the
        training and validation items for "test" (RecBole's full-sort protocol). With ``eval.exclude_seen``
        these leave the ranking; a test query's history (training and validation items) is among them, so
        an export that leaves the request's history out serves exactly what was measured."""
        before = (self.train,) if split == "validation" else (self.train, self.validation)
        seen: dict[str, set[str]] = defaultdict(set)
        for part in before:
            for u, i in zip(part.user_id, part.item_id):
                seen[u].add(i)
        return seen


# -------------------------------------------------------------------- items
def load_catalog(cfg: DataConfig, base_dir: str | None = None) -> tuple[Catalog, dict[str, int]]:
    """Reads the item file; duplicate ids with different text are an error."""
    icfg = cfg.items
    history_cols = cfg.interactions.query_history_columns or icfg.text_columns
    wanted = [icfg.item_id_column, *icfg.text_columns, *icfg.categorical_columns, *history_cols]
    table = read_table(icfg.path, icfg.format, dict.fromkeys(wanted), cfg.max_error_rows, base_dir)
    ids = as_text(table, icfg.item_id_column)
    text_parts = [as_text(table, c) for c in icfg.text_columns]
    texts = [TEXT_SEPARATOR.join(p for p in parts if p) for parts in zip(*text_parts)]
    hist_parts = [as_text(table, c) for c in history_cols]
    history = [" ".join(p for p in parts if p) for parts in zip(*hist_parts)]
    cats = {c: as_text(table, c) for c in icfg.categorical_columns}
    skipped = Counter()
    keep, first_row = [], {}
    for i, item in enumerate(ids):
        if not item:
            raise table.error(i, icfg.item_id_column, "empty item id")
        if item in first_row:
            j = first_row[item]
            if texts[j] != texts[i]:
                raise table.error(i, icfg.item_id_column,
                                  f"duplicate item id '{item}' with a different text than row "
                                  f"{table.sources[j][1]}; item ids must be unique")
            skipped["duplicate_items"] += 1
            continue
        first_row[item] = i
        if not texts[i]:
            skipped["empty_item_texts"] += 1  # kept: the id embedding still serves it
        keep.append(i)
    catalog = Catalog([ids[i] for i in keep], [texts[i] for i in keep],
                      {c: [v[i] for i in keep] for c, v in cats.items()},
                      [text_parts[0][i] if text_parts else ids[i] for i in keep],
                      [history[i] for i in keep])
    return catalog, dict(skipped) | ({"unreadable_item_rows": table.skipped_rows} if table.skipped_rows else {})


# ------------------------------------------------------------- interactions
def load(cfg: DataConfig, base_dir: str | None = None) -> RetrievalData:
    """Reads, checks, builds queries and splits. See module docstring."""
    catalog, skipped = load_catalog(cfg, base_dir)
    skipped = Counter(skipped)
    ic = cfg.interactions
    cols = [ic.item_id_column, ic.query_column, ic.user_id_column, ic.timestamp_column, ic.label_column,
            ic.sample_weight_column]
    paths = {"train": ic.path}
    if cfg.split.method == "files":
        paths.update(validation=cfg.split.validation_path, test=cfg.split.test_path)
        if ic.streaming:
            del paths["train"]  # read shard by shard while training (tfrec.data.stream)
    tables = {name: read_table(path, ic.format, [c for c in cols if c], cfg.max_error_rows, base_dir)
              for name, path in paths.items()}
    table = concat_tables(list(tables.values()))
    part_of = [name for name, t in tables.items() for _ in range(t.num_rows)]
    if table.skipped_rows:
        skipped["unreadable_interaction_rows"] += table.skipped_rows
    n = table.num_rows
    items = as_text(table, ic.item_id_column)
    users = as_text(table, ic.user_id_column) if ic.user_id_column else [""] * n
    stamps = np.array(as_float(table, ic.timestamp_column) if ic.timestamp_column else range(n), np.float64)
    labels = np.array(as_float(table, ic.label_column) if ic.label_column else [1.0] * n, np.float32)
    weights = sample_weights(table, ic.sample_weight_column) if ic.sample_weight_column else None

    threshold = ic.positive_threshold
    known = []
    for i, item in enumerate(items):
        if threshold is not None and not labels[i] >= threshold:  # NaN labels are not positives either
            skipped["below_positive_threshold"] += 1
        elif item in catalog.position:
            known.append(i)
        elif cfg.skip_unknown_items:
            skipped["unknown_items"] += 1
        else:
            raise table.error(i, ic.item_id_column, f"item '{item}' is not in the catalog {cfg.items.path} "
                              "(set data.skip_unknown_items: true to skip and count such rows)")

    # Per user, in time order; equal timestamps keep the file's row order.
    by_user: dict[str, list[int]] = defaultdict(list)
    for i in sorted(known, key=lambda i: (stamps[i], i)):
        by_user[users[i]].append(i)

    history = history_label = None
    if ic.query_history_items:  # the user's previous items, as catalog rows (and as text when there is no query)
        depth = ic.query_history_items
        history = np.full([n, depth], -1, np.int64)
        history_label = np.zeros([n, depth], np.float32)
        history_text = [""] * n
        for seq in by_user.values():
            rows = [catalog.position[items[i]] for i in seq]
            for pos, i in enumerate(seq):
                past = rows[max(0, pos - depth):pos][::-1]  # most recent first: truncation drops the oldest
                history[i, :len(past)] = past
                history_label[i, :len(past)] = labels[seq[max(0, pos - depth):pos][::-1]]
                if not ic.query_column:
                    history_text[i] = HISTORY_SEPARATOR.join(catalog.history_texts[j] for j in past)
    if ic.query_column:
        queries = as_text(table, ic.query_column)
        empty = [i for i in known if not queries[i]]
        if empty and not cfg.skip_empty_queries:
            raise table.error(empty[0], ic.query_column, "empty query text "
                              "(set data.skip_empty_queries: true to skip and count such rows)")
        skipped["empty_queries"] += len(empty)
    else:
        queries = history_text
        skipped["no_history"] += sum(1 for seq in by_user.values() if seq)  # each user's first interaction

    usable = {i for i in known if queries[i]}
    split = _split(cfg, by_user, usable, stamps, part_of)
    full = Examples(queries, items, users, labels, stamps, history, weights, history_label)
    parts = {name: full.take(idx) for name, idx in split.items()}
    info = None
    if ic.streaming:
        from tfrec.data import stream  # heavy: tensorflow, for streamed training shards only

        info = stream.scan(cfg, catalog, base_dir)
        n += info.rows
        skipped.update(info.skipped)
    for name, part in parts.items():
        if len(part) == 0 and not (name == "train" and info is not None):
            raise DataError(paths.get(name, ic.path), f"the {name} split is empty after splitting with "
                            f"data.split.method={cfg.split.method}; more interactions are needed")
    if info is not None and info.kept == 0:
        raise DataError(ic.path, "no usable training interactions in these shards")
    counts = {"items": len(catalog), "interactions_read": n,
              "train": info.kept if info is not None else len(parts["train"]),
              "validation": len(parts["validation"]), "test": len(parts["test"]),
              "users": len(by_user) if ic.user_id_column else 0}
    skipped = {k: v for k, v in skipped.items() if v}
    for key, value in skipped.items():
        log.info("data: skipped %d %s", value, key.replace("_", " "))
    return RetrievalData(catalog, parts["train"], parts["validation"], parts["test"], counts, skipped, info)


def sample_weights(table: Table, column: str) -> np.ndarray:
    """float32 [num_rows]: the weight column, each a finite number >= 0; a DataError naming the row otherwise."""
    weights = np.array(as_float(table, column), np.float32)
    negative = np.flatnonzero(weights < 0)
    if len(negative):
        i = int(negative[0])
        raise table.error(i, column, f"expected a sample weight >= 0, found {weights[i]:g}")
    return weights


def _split(cfg: DataConfig, by_user: dict[str, list[int]], usable: set[int], stamps: np.ndarray,
           part_of: list[str]) -> dict[str, list]:
    """Row indices of each split; ``part_of[i]``: the file set (train/validation/test) row i was read from."""
    method = cfg.split.method
    if method == "files":
        return {name: sorted(i for i in usable if part_of[i] == name) for name in ("train", "validation", "test")}
    if method == "leave_last":
        train, val, test = [], [], []
        for seq in by_user.values():
            seq = [i for i in seq if i in usable]
            if len(seq) >= 3:
                train += seq[:-2]
                val.append(seq[-2])
                test.append(seq[-1])
            else:
                train += seq  # too short to hold anything out
        return {"train": sorted(train), "validation": sorted(val), "test": sorted(test)}
    order = sorted(usable)
    if method == "random":
        random.Random(cfg.split.seed).shuffle(order)
    else:  # time: the latest interactions are held out
        order.sort(key=lambda i: (stamps[i], i))
    n = len(order)
    n_test = max(1, int(round(n * cfg.split.test_fraction)))
    n_val = max(1, int(round(n * cfg.split.validation_fraction)))
    if method == "random":
        return {"test": sorted(order[:n_test]), "validation": sorted(order[n_test:n_test + n_val]),
                "train": sorted(order[n_test + n_val:])}
    return {"train": order[:n - n_test - n_val], "validation": order[n - n_test - n_val:n - n_test],
            "test": order[n - n_test:]}


def hold_out_cold_items(data: RetrievalData, fraction: float | None, seed: int) -> RetrievalData:
    """Makes ``fraction`` of the catalog cold: no training or validation interaction mentions them.

    Rows whose target is cold leave the training and validation splits, and cold
    items leave those rows' histories (the rest shift up, padding stays at the
    tail), so nothing trains their id embeddings. Test rows are kept whole: a
    cold target is what the ``cold_items`` section measures, and a cold item in
    a test history is a real user's recent item (the model reads its text).

    Returns:
      the new data; its ``cold_items``: int64 [num_cold] sorted catalog rows of the cold items
      (``data`` itself when ``fraction`` is None or 0).
    """
    if not fraction:
        return data
    n = len(data.catalog)
    rng = np.random.default_rng(seed)
    cold = np.sort(rng.choice(n, size=max(1, int(round(fraction * n))), replace=False)).astype(np.int64)
    is_cold = np.zeros(n, bool)
    is_cold[cold] = True

    def warm(examples: Examples) -> Examples:
        targets = np.array([data.catalog.position[i] for i in examples.item_id], np.int64)
        kept = examples.take(np.flatnonzero(~is_cold[targets]))
        if kept.history is not None:
            history = np.full_like(kept.history, -1)
            history_label = np.zeros(kept.history.shape, np.float32)
            for r, row in enumerate(kept.history):
                warm_items = (row >= 0) & ~is_cold[np.maximum(row, 0)]
                history[r, :warm_items.sum()] = row[warm_items]
                if kept.history_label is not None:
                    history_label[r, :warm_items.sum()] = kept.history_label[r][warm_items]
            kept.history = history
            kept.history_label = history_label if kept.history_label is not None else None
        return kept

    train, validation = warm(data.train), warm(data.validation)
    counts = dict(data.counts, train=len(train), validation=len(validation), cold_items=len(cold))
    return RetrievalData(data.catalog, train, validation, data.test, counts, data.skipped, data.stream, cold)
