"""Synthetic catalogs and interaction logs, generated in code and fully seeded.

* :func:`write_smoke` (the smoke preset): ``synthetic://smoke/items.csv`` and
  ``synthetic://smoke/interactions.csv``, written under
  ``base_dir/synthetic/smoke-v2/`` on first use (the version changes with the
  data, so files an older release wrote are never read as today's). Items
  belong to one of 8 genres and have 3-word titles drawn from their genre's
  words; each query names two words of the item it leads to, half of them by
  a synonym the titles never use (as searchers do), so a text two-tower can
  learn it and BM25 only in part.
* :func:`write_shop` (``bench/scale.py``): a shop of any size, vectorised so
  10^7 interactions take seconds: Zipf-like item popularity inside each
  category, users with two favourite categories, per-user time-ordered
  histories, text queries naming words (and 40% the number) of the item bought.
"""

from __future__ import annotations

import csv
import os
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np

from tfrec import fileio
from tfrec.data.to_tfrecord import shard_paths
from tfrec.errors import DataError

GENRES = {
    "space": "rocket star orbit galaxy comet alien planet moon",
    "crime": "detective murder heist gangster police alibi clue thief",
    "love": "romance wedding heart kiss letter summer promise dance",
    "war": "soldier battle army tank trench general medal siege",
    "horror": "ghost vampire haunted curse zombie witch shadow scream",
    "comedy": "laugh party prank clown joke holiday family road",
    "sport": "football boxing race champion coach team goal match",
    "music": "guitar singer band concert piano song jazz rhythm",
}
# What searchers type instead of a title word (each genre word above has one, in order): the smoke log's
# vocabulary mismatch, which a learned text tower can pick up from the interactions and BM25 cannot.
SYNONYMS = dict(zip(" ".join(GENRES.values()).split(), """
    spaceship sun satellite cosmos asteroid martian world lunar
    sleuth killing robbery mobster cops excuse evidence burglar
    romantic marriage sweetheart embrace note sunshine vow waltz
    trooper combat troops armour frontline commander honour blockade
    spirit dracula spooky hex undead sorceress darkness shriek
    giggle celebration trick jester gag vacation relatives trip
    soccer fight sprint winner trainer squad score game
    strings vocalist group gig keys tune blues beat""".split()))
EXTRA_WORDS = "looking for something with a the and of in about movie like".split()


def vocabulary() -> list[str]:
    """Every word the synthetic texts use (the tiny random BERT's vocab builds on it)."""
    words = [w for ws in GENRES.values() for w in ws.split()] + list(GENRES) + list(SYNONYMS.values()) + EXTRA_WORDS
    return sorted(set(words))


def write_smoke(folder: str, num_items: int = 160, num_users: int = 60, per_user: int = 16, seed: int = 7,
                synonym_rate: float = 0.5) -> None:
    """Writes items.csv and interactions.csv into ``folder``.

    Each query is "looking for" and two of its item's three title words, each
    replaced by its :data:`SYNONYMS` entry with probability ``synonym_rate``.
    """
    rng = random.Random(seed)
    genres = list(GENRES)
    items = []
    for i in range(num_items):
        genre = genres[i % len(genres)]
        title = " ".join(rng.sample(GENRES[genre].split(), 3))
        items.append((f"item{i:04d}", title, genre))
    os.makedirs(folder, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder))
    with open(tmp / "items.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["item_id", "title", "genre"])
        w.writerows(items)
    with open(tmp / "interactions.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["user_id", "item_id", "query", "rating", "timestamp"])
        t = 1_000_000
        for u in range(num_users):
            favourite = rng.sample(genres, 2)
            for _ in range(per_user):
                genre = favourite[0] if rng.random() < 0.7 else rng.choice(favourite + genres)
                candidates = [it for it in items if it[2] == genre]
                item = rng.choice(candidates)
                words = item[1].split()
                query = " ".join(["looking", "for"] + [SYNONYMS[w] if rng.random() < synonym_rate else w
                                                       for w in rng.sample(words, 2)])
                rating = 5 if genre in favourite else rng.choice([1, 2, 3])
                t += rng.randint(1, 100)
                w.writerow([f"user{u:03d}", item[0], query, rating, t])
    # Atomic: concurrent runs (parallel tests) never read a half-written file.
    for name in ("items.csv", "interactions.csv"):
        os.replace(tmp / name, Path(folder) / name)
    tmp.rmdir()


QUALIFIERS = "red blue black small large cheap new classic best gift".split()


def write_shop(folder: str, num_interactions: int, num_items: int, seed: int = 0, per_user: int = 20,
               zipf: float = 1.0, held_out_files: bool = False, held_out_users: int | None = None,
               train_shards: int = 0) -> dict[str, int]:
    """Writes ``items.csv`` (item_id, title, category) and ``interactions.csv``.

    ``interactions.csv`` holds (user_id, item_id, query, rating, timestamp),
    rows grouped by user in time order; users have ``per_user`` interactions on
    average (at least 3, so leave-last keeps one for training). Within a
    category the item of popularity rank r is bought with probability
    proportional to 1 / r ** zipf. With ``held_out_files`` the same rows are
    also written split leave-last (``split.method: files``): each user's last
    interaction in ``test.csv``, the one before in ``validation.csv``, the rest
    in ``train.csv``.

    ``held_out_users``: only a seeded sample of this many users is held out
    (the others' rows all train), so the held-out files stay the same size as
    the log grows. ``train_shards`` > 0: the training rows go to TFRecord
    shards ``shards/train-0000i-of-0000N.tfrecord`` (contiguous, as
    ``python -m tfrec.data.to_tfrecord`` writes them, same feature types)
    instead of ``train.csv`` and ``interactions.csv``, serialized in-graph a
    shard at a time (10^7 rows in minutes, not the hour a Python loop over
    ``tf.train.Example`` takes). Returns the counts written.
    """
    rng = np.random.default_rng(seed)
    genres = list(GENRES)
    words = np.array([GENRES[g].split() for g in genres])  # [8 categories, 8 words]
    n_cat = len(genres)
    category = np.arange(num_items) % n_cat  # item i -> category i % 8; rank within it: i // 8
    title_words = np.stack([rng.permutation(8)[:3] for _ in range(min(num_items, 4096))])
    title_words = title_words[rng.integers(0, len(title_words), num_items)]  # [num_items, 3] word slots
    titles = [" ".join(words[c, w]) + f" {i}" for i, (c, w) in enumerate(zip(category, title_words))]

    # Users: sizes from a geometric draw around per_user (>= 3), trimmed to num_interactions exactly.
    sizes = rng.geometric(1.0 / max(per_user - 2, 1), size=num_interactions // 3 + 1) + 2
    cut = int(np.searchsorted(np.cumsum(sizes), num_interactions))
    sizes = sizes[:cut + 1]
    sizes[-1] -= int(sizes.sum()) - num_interactions
    if sizes[-1] < 3 and len(sizes) > 1:
        sizes[-2] += sizes[-1]
        sizes = sizes[:-1]
    user = np.repeat(np.arange(len(sizes)), sizes)
    favourites = rng.integers(0, n_cat, size=(len(sizes), 2))
    pick = rng.random(num_interactions)
    cat = np.where(pick < 0.5, favourites[user, 0], np.where(pick < 0.8, favourites[user, 1],
                                                              rng.integers(0, n_cat, num_interactions)))
    per_cat = np.bincount(category, minlength=n_cat)  # items in each category
    # Zipf inside a category: inverse CDF over the largest category's ranks, redrawn where it overshoots.
    weights = 1.0 / np.arange(1, per_cat.max() + 1) ** zipf
    cdf = np.cumsum(weights) / weights.sum()
    rank = np.searchsorted(cdf, rng.random(num_interactions) * cdf[per_cat[cat] - 1])
    item = cat + n_cat * rank
    slots = title_words[item]
    chosen = np.sort(rng.random((num_interactions, 3)).argsort(axis=1)[:, :2], axis=1)
    query_words = words[cat[:, None], np.take_along_axis(slots, chosen, axis=1)]  # [n, 2]
    qualifier = rng.integers(0, len(QUALIFIERS) + 1, num_interactions)  # == len: none
    # Some shoppers type the item's number (a model number), so distinct queries grow with the catalog.
    numbered = rng.random(num_interactions) < 0.4
    rating = np.where(np.isin(cat, favourites[user, 0]), 5, rng.integers(1, 5, num_interactions))
    timestamp = 1_000_000 + np.cumsum(rng.integers(1, 100, num_interactions))  # ascending inside each user

    os.makedirs(folder, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder))
    with open(tmp / "items.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["item_id", "title", "category"])
        w.writerows(zip((f"i{i}" for i in range(num_items)), titles, (genres[c] for c in category)))
    quals = QUALIFIERS + [""]
    last = np.cumsum(sizes) - 1  # each user's last row
    if held_out_users is not None and held_out_users < len(sizes):  # drawn last: the rows above do not change
        last = last[np.sort(rng.choice(len(sizes), held_out_users, replace=False))]
    part = np.zeros(num_interactions, np.int8)  # 0 train, 1 validation, 2 test
    part[last], part[last - 1] = 2, 1
    files = {} if train_shards else {"interactions.csv": slice(None)}
    if held_out_files or train_shards:
        files.update({"validation.csv": part == 1, "test.csv": part == 2})
        if not train_shards:
            files["train.csv"] = part == 0
        else:
            train = np.flatnonzero(part == 0)
            columns = {"user": user, "item": item, "qualifier": qualifier, "words": query_words,
                       "numbered": numbered, "rating": rating, "timestamp": timestamp}
            _write_shards(tmp / "shards", train_shards, {k: v[train] for k, v in columns.items()}, quals)
    for name, rows in files.items():
        with open(tmp / name, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["user_id", "item_id", "query", "rating", "timestamp"])
            w.writerows(zip((f"u{u}" for u in user[rows].tolist()), (f"i{i}" for i in item[rows].tolist()),
                            (f"{quals[k]} {a} {b}".lstrip() + (f" {i}" if num else "") for k, a, b, i, num in
                             zip(qualifier[rows].tolist(), query_words[rows, 0].tolist(),
                                 query_words[rows, 1].tolist(), item[rows].tolist(), numbered[rows].tolist())),
                            rating[rows].tolist(), timestamp[rows].tolist()))
    for name in ("items.csv", *files):
        os.replace(tmp / name, Path(folder) / name)
    if train_shards:  # last: its presence says the shop is complete
        shutil.rmtree(Path(folder) / "shards", ignore_errors=True)
        os.replace(tmp / "shards", Path(folder) / "shards")
    tmp.rmdir()
    counts = {"items": num_items, "interactions": num_interactions, "users": len(sizes)}
    if held_out_files or train_shards:
        counts.update(train=int((part == 0).sum()), validation=int((part == 1).sum()), test=int((part == 2).sum()))
    return counts


def _write_shards(folder: Path, shards: int, rows: dict[str, np.ndarray], quals: list[str]) -> None:
    """Training rows -> ``folder/train-0000i-of-0000N.tfrecord`` of tf.train.Example (user_id, item_id, query:
    bytes; rating, timestamp: int64), each value [n] (``words`` [n, 2]) as :func:`write_shop` drew them."""
    import tensorflow as tf  # heavy: only streamed shops need TFRecords; the smoke CSVs stay TensorFlow-free

    folder.mkdir(parents=True)
    bounds = np.linspace(0, len(rows["item"]), shards + 1).astype(int)
    for path, lo, hi in zip(shard_paths(str(folder / "train"), shards), bounds[:-1], bounds[1:]):
        part = {k: v[lo:hi] for k, v in rows.items()}
        item = tf.strings.as_string(part["item"])
        number = tf.where(part["numbered"], item, "")
        # As the CSV writer spells it: "[qualifier ]a b[ number]".
        query = tf.strings.strip(tf.strings.join([tf.gather(quals, part["qualifier"]), part["words"][:, 0],
                                                  part["words"][:, 1], number], separator=" "))
        records = _examples({"user_id": tf.strings.join(["u", tf.strings.as_string(part["user"])]),
                             "item_id": tf.strings.join(["i", item]), "query": query,
                             "rating": tf.constant(part["rating"], tf.int64),
                             "timestamp": tf.constant(part["timestamp"], tf.int64)})
        with tf.io.TFRecordWriter(path) as writer:
            for record in records.numpy():
                writer.write(record)


def _examples(features: dict):
    """{name: string or int64 [n]} -> serialized ``tf.train.Example`` string [n], built with ``tf.io.encode_proto``
    message by message (BytesList/Int64List, Feature, the map entry, Features, Example), all rows at once."""
    import tensorflow as tf  # heavy: as in _write_shards

    def encode(message: str, fields: dict):
        values = [tf.reshape(v, [-1, 1]) if v.shape.rank == 1 else v for v in fields.values()]
        sizes = tf.concat([tf.fill([tf.shape(v)[0], 1], v.shape[1]) for v in values], axis=1)
        return tf.io.encode_proto(sizes, values, list(fields), f"tensorflow.{message}")

    entries = []
    for name, values in features.items():
        kind = "bytes_list" if values.dtype == tf.string else "int64_list"
        listed = encode("BytesList" if kind == "bytes_list" else "Int64List", {"value": values})
        feature = encode("Feature", {kind: listed})
        entries.append(encode("Features.FeatureEntry", {"key": tf.fill(tf.shape(values), name), "value": feature}))
    return encode("Example", {"features": encode("Features", {"feature": tf.stack(entries, axis=1)})})


SMOKE_VERSION = 2  # 2: queries use synonyms (SYNONYMS); bump whenever write_smoke writes other rows


def materialize(path: str, base_dir: str | None) -> str:
    """Resolves ``synthetic://NAME/FILE`` to a real file, generating it if needed."""
    name, _, file = path[len("synthetic://"):].partition("/")
    if name != "smoke" or file not in ("items.csv", "interactions.csv"):
        raise DataError(path, "unknown synthetic data set; expected synthetic://smoke/items.csv or "
                        "synthetic://smoke/interactions.csv")
    base = base_dir or tempfile.gettempdir()
    if fileio.is_url(base):  # a tf.io.gfile folder (gs://, ram://): generated locally, then copied there
        folder = f"{base.rstrip('/')}/synthetic/{name}-v{SMOKE_VERSION}"
        target = f"{folder}/{file}"
        if not fileio.exists(target):
            with tempfile.TemporaryDirectory() as local:
                write_smoke(local)
                fileio.makedirs(folder)
                for generated in ("items.csv", "interactions.csv"):
                    fileio.write_text(f"{folder}/{generated}", Path(local, generated).read_text(encoding="utf-8"))
        return target
    folder = os.path.join(base, "synthetic", f"{name}-v{SMOKE_VERSION}")
    target = os.path.join(folder, file)
    if not os.path.exists(target):
        write_smoke(folder)
    return target
