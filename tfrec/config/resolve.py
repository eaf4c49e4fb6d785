"""Settings chosen from the data, and refusals of settings that do not fit it.

A preset file, a ``--config`` file and each ``--set`` fix the keys they name
(``Config.explicit``); an explicit value always wins. A key none of them
names, among those below, is chosen here: from the config alone by
:func:`resolve_config` (when the config is built), from a summary of the data
read (:class:`DataSummary`) by :func:`resolve_data` (after ``load_data``).
Each choice comes with the one line the log shows, and the resolved config is
what ``params.yaml`` holds, so ``--config JOB_DIR/params.yaml`` repeats the run
with every value explicit. No TensorFlow here, and no I/O but :func:`encoder_width`'s
read of the encoder's config.json.

    data.split.method    files with held-out paths; leave_last with history-built queries and
                         timestamps; time with timestamps; random otherwise
    model.text_skip      on where a pretrained encoder reads the query and the item text, off otherwise
    model.embedding_dim  the encoder's width with the text skip on and at most FULL_WIDTH_MAX_ITEMS
                         items (the untrained towers are then the content baseline exactly), else 64
    train.batch_size,    by training rows (ROW_TIERS): small data gets small batches and more
    train.epochs         epochs, 10^6 rows batches of 1,024 and 2 epochs
    retrieval.negatives  full up to FULL_SOFTMAX_MAX_ITEMS items, mixed above; in_batch when
                         streaming or with cross-replica or hard negatives
    eval.baselines       every baseline that applies to the data (BASELINE_NEEDS)
    eval.exclude_seen    false: leaving a user's seen items out is a protocol the user picks

:func:`refusals` (part of ``tfrec.config.validate``) and :func:`check_data`
refuse, with one line naming the key, a value that assumes something the
config or the data does not have.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable

from tfrec.config.model import query_reads_text
from tfrec.config.parse import check, merge, nest
from tfrec.data.readers import resolve_path
from tfrec.errors import DataError

log = logging.getLogger("tfrec")
Config = Any  # a tfrec.config.Config (not imported: that package imports this module)

# Full softmax scores every catalog item at every step: the item tower over the whole catalog plus
# batch x items x dim multiply-adds for the logits. Measured on 2 cores (100,000 items, batch 1,024, dim 64,
# frozen cached text): one epoch of 860 steps took 725 s with full negatives against 29 s in-batch, i.e. about
# 8 us per catalog item per step over a 34 ms in-batch step. Up to 5,000 items the catalog pass adds at most
# about as much as the rest of the step (5,000 x 8 us = 40 ms), and an exact softmax is the strongest signal
# (the MovieLens presets' 1,682 items); above, mixed (in-batch plus num_sampled catalog draws, logQ-corrected)
# keeps the tail in the negatives at a cost that does not grow with the catalog.
FULL_SOFTMAX_MAX_ITEMS = 5_000

# The index holds items x embedding_dim float32 and a brute-force query reads all of it. With the text skip, a width
# below the encoder's (MiniLM: 384) only approximates the encoder's cosine at the start (tfrec.text_skip), so the
# content baseline is exactly servable only at the encoder's width; up to 20,000 items that index is at most
# 20,000 x 384 x 4 bytes = 31 MB (6x the 64-wide default's 5 MB), above it the default width stays.
FULL_WIDTH_MAX_ITEMS = 20_000

# (training rows below, batch size, epochs): larger data gets larger batches (more in-batch negatives, fewer
# steps) and fewer epochs; at each tier's top, 20,000 rows x 20 epochs at 128, 200,000 x 10 at 256 and 500,000 x 3
# at 1,024 are each 1,500 to 8,000 steps. Early stopping (train.early_stopping_patience) ends a small run's many
# epochs once validation stops improving. From 500,000 rows two epochs: on a shop log of 800,000 training rows
# (100,000 items, text queries, mixed negatives) validation recall@10 was 0.714, 0.726 and 0.732 after epochs 1, 2
# and 3, so a third epoch bought 0.006 for half as much training time again.
ROW_TIERS = ((20_000, 128, 20), (200_000, 256, 10), (500_000, 1024, 3), (None, 1024, 2))
TIER_NOTES = {None: "a third epoch adds little at this size"}

# What each baseline (tfrec.baseline_runs.BASELINES) needs of the data, in the order they run.
BASELINE_NEEDS: dict[str, tuple[str, ...]] = {
    "popularity": (),
    "bm25": ("query_text",),
    "content": ("item_text",),
    "id_sequence": ("history", "in_memory"),
    "id_two_tower": ("users", "in_memory"),
}


@dataclass(frozen=True)
class DataSummary:
    """What the choices read of the data.

    Attributes:
      items: catalog size.
      train_rows: training interactions.
      users: distinct user ids (0 without ``data.interactions.user_id_column``).
      has_query_text: a query text column (``data.interactions.query_column``).
      has_history: queries built from each user's previous items (``query_history_items``).
      has_item_text: at least one item has a non-empty text.
      streaming: training rows are streamed from shards, not held in memory.
      label_range: (min, max) of the training labels, or None without a label column.
      encoder_width: the pretrained text encoder's output width (its config.json ``hidden_size``), or None
        (a ``random://`` encoder, or a checkpoint whose config cannot be read here).
    """

    items: int
    train_rows: int
    users: int = 0
    has_query_text: bool = False
    has_history: bool = False
    has_item_text: bool = True
    streaming: bool = False
    label_range: tuple[float, float] | None = None
    encoder_width: int | None = None


def summarize(cfg: Config, data: Any) -> DataSummary:
    """The :class:`DataSummary` of ``data``, the :class:`tfrec.data.dataset.RetrievalData` that
    ``tfrec.run.load_data`` read under ``cfg`` (not imported: the data package imports this one)."""
    ic = cfg.data.interactions
    labels = data.train.label
    return DataSummary(
        items=len(data.catalog), train_rows=data.num_train, users=int(data.counts.get("users", 0)),
        has_query_text=ic.query_column is not None, has_history=bool(ic.query_history_items),
        has_item_text=any(data.catalog.texts), streaming=data.stream is not None,
        label_range=(float(labels.min()), float(labels.max())) if ic.label_column and len(labels) else None,
        encoder_width=encoder_width(cfg.model.query_encoder.checkpoint))


def encoder_width(checkpoint: str) -> int | None:
    """``hidden_size`` in the checkpoint folder's config.json (``pkg://package/folder`` or a local folder), or
    None where it is not there to read (the encoder's own loading then says what is wrong)."""
    try:
        folder = resolve_path(checkpoint)[0] if checkpoint.startswith("pkg://") else checkpoint
        width = json.loads((Path(folder) / "config.json").read_text()).get("hidden_size")
    except (DataError, OSError, ValueError, AttributeError):  # DataError: the package is not installed
        return None
    return width if isinstance(width, int) and width > 0 else None


# ------------------------------------------------------------------ explicit keys
def is_explicit(cfg: Config, key: str) -> bool:
    """Whether a preset, the user's file or a ``--set`` named ``key`` (or a section holding it)."""
    return any(key == k or key.startswith(k + ".") for k in cfg.explicit)


def get(cfg: Any, key: str) -> Any:
    """The value at dotted ``key`` (``train.batch_size``)."""
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _apply(cfg: Config, rules: dict[str, Callable], *args) -> tuple[Config, list[str]]:
    """Runs each rule whose key is not explicit, in order (a rule may read the keys chosen before it);
    returns the new config, where each chosen key is now explicit, and one log line per key."""
    lines = []
    for key, rule in rules.items():
        if is_explicit(cfg, key):
            continue
        value, reason = rule(cfg, *args)
        cfg = merge(cfg, nest({key: value}))
        cfg = dataclasses.replace(cfg, explicit=cfg.explicit | {key})
        lines.append(f"{key}={_show(value)}: {reason}")
    return cfg, lines


def _show(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(map(str, value)) + "]"
    return str(value).lower() if isinstance(value, bool) else str(value)


# ------------------------------------------------------------------ choices from the config
def choose_split(cfg: Config) -> tuple[str, str]:
    """``data.split.method`` from the columns the config names."""
    d = cfg.data
    if d.split.validation_path or d.split.test_path:
        return "files", "data.split.validation_path / test_path name the held-out interactions"
    if d.interactions.query_history_items and d.interactions.timestamp_column:
        return "leave_last", "queries are built from history: each user's last interaction is the test, the " \
                             "one before it the validation"
    if d.interactions.timestamp_column:
        return "time", f"timestamps in '{d.interactions.timestamp_column}': the latest interactions are held out"
    return "random", "no timestamp column: a seeded random share of the interactions is held out"


def choose_text_skip(cfg: Config) -> tuple[str, str]:
    """``model.text_skip``: the towers start as the encoder's cosine where that is worth starting from."""
    m = cfg.model
    if not query_reads_text(cfg):
        return "off", "queries are history items, not text"
    if m.item_text_encoder == "none":
        return "off", "the item tower reads no text (model.item_text_encoder none)"
    if m.query_encoder.checkpoint.startswith("random://"):
        return "off", "a randomly initialised encoder: its untrained ranking is no start worth keeping"
    return "on", "a pretrained encoder reads the query and item text: the untrained towers rank as its cosine " \
                 "(the content baseline), and validation keeps that start unless an epoch beats it"


CONFIG_RULES = {"data.split.method": choose_split, "model.text_skip": choose_text_skip}


def resolve_config(cfg: Config) -> tuple[Config, list[str]]:
    """``cfg`` with the keys chosen from the config alone (``CONFIG_RULES``) that it leaves open; log lines."""
    return _apply(cfg, CONFIG_RULES)


# ------------------------------------------------------------------ choices from the data
def choose_embedding_dim(cfg: Config, s: DataSummary) -> tuple[int, str]:
    """``model.embedding_dim``: the encoder's width where that makes the untrained towers exactly ``content``."""
    default = cfg.model.embedding_dim
    skip = cfg.model.text_skip if cfg.model.text_skip != "auto" else choose_text_skip(cfg)[0]
    if skip != "on" or s.encoder_width is None or s.encoder_width <= default:
        return default, "the default width"
    if s.items > FULL_WIDTH_MAX_ITEMS:
        return default, f"the default width: {s.items:,} items (over {FULL_WIDTH_MAX_ITEMS:,}) at the encoder's " \
                        f"{s.encoder_width} would make the index {s.items * s.encoder_width * 4 / 1e6:,.0f} MB; the " \
                        "towers start near the encoder's cosine through the catalog's top directions"
    return s.encoder_width, f"the encoder's width: the untrained towers rank exactly as its cosine (the content " \
                            f"baseline, which validation can then serve); {s.items:,} items (at most " \
                            f"{FULL_WIDTH_MAX_ITEMS:,}) make an index of {s.items * s.encoder_width * 4 / 1e6:,.1f} MB"


def choose_batch_size(cfg: Config, s: DataSummary) -> tuple[int, str]:
    below, batch, _ = _tier(s.train_rows)
    return batch, f"{s.train_rows:,} training rows ({_tier_name(below)})"


def choose_epochs(cfg: Config, s: DataSummary) -> tuple[int, str]:
    below, _, epochs = _tier(s.train_rows)
    steps = -(-s.train_rows // cfg.train.batch_size)
    note = f", {TIER_NOTES[below]}" if below in TIER_NOTES else ""
    return epochs, f"{s.train_rows:,} training rows ({_tier_name(below)}{note}): {steps:,} steps per epoch at " \
                   f"batch {cfg.train.batch_size:,}; early stopping after {cfg.train.early_stopping_patience} " \
                   "epochs without a better validation metric"


def _tier(rows: int) -> tuple[int | None, int, int]:
    return next(t for t in ROW_TIERS if t[0] is None or rows < t[0])


def _tier_name(below: int | None) -> str:
    return f"under {below:,}" if below is not None else f"{ROW_TIERS[-2][0]:,} or more"


def choose_negatives(cfg: Config, s: DataSummary) -> tuple[str, str]:
    """``retrieval.negatives`` by the cost per step of scoring the catalog (see ``FULL_SOFTMAX_MAX_ITEMS``)."""
    r = cfg.retrieval
    if s.streaming or r.cross_replica_negatives or r.num_hard_negatives is not None:
        why = ("training rows are streamed (catalog negatives need the training frequencies in memory)"
               if s.streaming else "retrieval.cross_replica_negatives / num_hard_negatives work on in-batch "
               "negatives")
        return "in_batch", why
    cost = f"{cfg.train.batch_size:,} x {s.items:,} x {cfg.model.embedding_dim} = " \
           f"{cfg.train.batch_size * s.items * cfg.model.embedding_dim:.1e} multiply-adds per step"
    if s.items <= FULL_SOFTMAX_MAX_ITEMS:
        return "full", f"{s.items:,} items (at most {FULL_SOFTMAX_MAX_ITEMS:,}): scoring the whole catalog each " \
                       f"step ({cost}) costs at most about as much as the rest of the step, and an exact " \
                       "softmax is the strongest signal"
    return "mixed", f"{s.items:,} items; full softmax would score every item each step ({cost}); mixed " \
                    f"scores the batch and {r.num_sampled} sampled items"


def applicable_baselines(s: DataSummary) -> dict[str, str | None]:
    """Baseline name -> None when it can run on the data, else the phrase saying what it needs."""
    has = {"query_text": s.has_query_text, "item_text": s.has_item_text, "history": s.has_history,
           "users": s.users > 0, "in_memory": not s.streaming}
    missing = {"query_text": "no query text", "item_text": "no item text", "history": "no history-built queries",
               "users": "no user ids", "in_memory": "streamed training rows"}
    return {name: next((missing[n] for n in needs if not has[n]), None) for name, needs in BASELINE_NEEDS.items()}


def choose_baselines(cfg: Config, s: DataSummary) -> tuple[list[str], str]:
    fits = applicable_baselines(s)
    chosen = [name for name, why in fits.items() if why is None]
    left = [f"{name} ({why})" for name, why in fits.items() if why is not None]
    return chosen, "every baseline that applies to the data" + (f"; not {', '.join(left)}" if left else "")


def choose_exclude_seen(cfg: Config, s: DataSummary) -> tuple[bool, str]:
    if s.users == 0:
        return False, "no user ids, so no user's training items to leave out"
    return False, "each user's training items stay in the ranking (set it to true where people never pick an " \
                  "item twice)"


# In order: the epochs' reason reads the batch size, the negatives' cost reads it and the embedding width.
DATA_RULES = {"model.embedding_dim": choose_embedding_dim, "train.batch_size": choose_batch_size,
              "train.epochs": choose_epochs, "retrieval.negatives": choose_negatives,
              "eval.baselines": choose_baselines, "eval.exclude_seen": choose_exclude_seen}
# What a preset chose for its own data, chosen again for other data (tfrec.config._other_data); the preset's model
# width stays, as its other model settings do.
RESOLVED_KEYS = (*CONFIG_RULES, *(key for key in DATA_RULES if key != "model.embedding_dim"))


def resolve_data(cfg: Config, summary: DataSummary) -> tuple[Config, list[str]]:
    """``cfg`` with each data-dependent key it leaves open (``DATA_RULES``) chosen for ``summary``; log lines.

    The chosen keys become explicit, so resolving again changes nothing.
    """
    return _apply(cfg, DATA_RULES, summary)


def pending(cfg: Config) -> list[str]:
    """The keys that :func:`resolve_data` would still choose (none after it ran, none in a preset)."""
    return [k for k in DATA_RULES if not is_explicit(cfg, k)]


def for_data(cfg: Config, data: Any) -> Config:
    """Checks ``cfg`` against ``data`` (a ``RetrievalData``; :func:`check_data`), resolves its open keys and logs
    each choice once; returns the resolved config."""
    summary = summarize(cfg, data)
    check_data(cfg, summary)
    cfg, lines = resolve_data(cfg, summary)
    for line in lines:
        log.info("config: %s", line)
    return cfg


# ------------------------------------------------------------------ refusals
def refusals(cfg: Config) -> None:
    """Refuses what assumes data the config says it does not have; raises ConfigError naming the key."""
    ic, bl = cfg.data.interactions, cfg.eval.baselines
    check(not cfg.eval.exclude_seen or ic.user_id_column is not None, "eval.exclude_seen",
          "needs data.interactions.user_id_column: without user ids every row is one user's, so nearly the whole "
          "catalog would be left out of each ranking and every figure inflated")
    if ic.query_history_items:
        check(ic.timestamp_column is not None, "data.interactions.timestamp_column",
              "is required when queries are built from history (query_history_items): a history is each user's "
              "previous items in time")
    if isinstance(bl, list):
        has = {"query_text": ic.query_column is not None, "item_text": bool(cfg.data.items.text_columns),
               "history": bool(ic.query_history_items), "users": ic.user_id_column is not None,
               "in_memory": not ic.streaming}
        needs = {"query_text": "data.interactions.query_column", "item_text": "data.items.text_columns",
                 "history": "data.interactions.query_history_items", "users": "data.interactions.user_id_column",
                 "in_memory": "the training interactions in memory (not data.interactions.streaming)"}
        for name in bl:
            for need in BASELINE_NEEDS.get(name, ()):
                check(has[need], "eval.baselines", f"{name} needs {needs[need]}; leave it out of the list")


def check_data(cfg: Config, s: DataSummary) -> None:
    """Refuses, once the data is read, a setting the data contradicts; raises ConfigError naming the key."""
    if cfg.eval.exclude_seen:
        check(s.users > 1, "eval.exclude_seen", f"the data has {s.users} distinct user id(s) in "
              f"'{cfg.data.interactions.user_id_column}': every row would be one user's; set it to false")
    if isinstance(cfg.eval.baselines, list) and "content" in cfg.eval.baselines:
        check(s.has_item_text, "eval.baselines", "content needs item text and every item's text is empty; "
              "leave it out of the list")
    rk = cfg.ranking
    if rk.weight > 0 and rk.objective == "binary" and s.label_range is not None:
        low, high = s.label_range
        check(low < rk.positive_threshold <= high, "ranking.positive_threshold",
              f"{rk.positive_threshold:g} leaves one class: the training labels run from {low:g} to {high:g} and "
              "the binary head needs labels on both sides of it")
