"""A small synthetic catalog and interaction log, generated in code (smoke preset).

``synthetic://smoke/items.csv`` and ``synthetic://smoke/interactions.csv`` are
written under ``base_dir/synthetic/smoke/`` on first use. Items belong to one of
8 genres and have 3-word titles drawn from their genre's words; each query names
two words of the item it leads to, so a text two-tower can learn it. Fully
deterministic (seeded).
"""

from __future__ import annotations

import csv
import os
import random
import tempfile
from pathlib import Path

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
EXTRA_WORDS = "looking for something with a the and of in about movie like".split()


def vocabulary() -> list[str]:
    """Every word the synthetic texts use (the tiny random BERT's vocab builds on it)."""
    words = [w for ws in GENRES.values() for w in ws.split()] + list(GENRES) + EXTRA_WORDS
    return sorted(set(words))


def write_smoke(folder: str, num_items: int = 160, num_users: int = 60, per_user: int = 16, seed: int = 7) -> None:
    """Writes items.csv and interactions.csv into ``folder``."""
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
                query = " ".join(["looking", "for"] + rng.sample(words, 2))
                rating = 5 if genre in favourite else rng.choice([1, 2, 3])
                t += rng.randint(1, 100)
                w.writerow([f"user{u:03d}", item[0], query, rating, t])
    # Atomic: concurrent runs (parallel tests) never read a half-written file.
    for name in ("items.csv", "interactions.csv"):
        os.replace(tmp / name, Path(folder) / name)
    tmp.rmdir()


def materialize(path: str, base_dir: str | None) -> str:
    """Resolves ``synthetic://NAME/FILE`` to a real file, generating it if needed."""
    name, _, file = path[len("synthetic://"):].partition("/")
    if name != "smoke" or file not in ("items.csv", "interactions.csv"):
        from tfrec.errors import DataError

        raise DataError(path, "unknown synthetic data set; expected synthetic://smoke/items.csv or "
                        "synthetic://smoke/interactions.csv")
    base = base_dir or tempfile.gettempdir()
    if "://" in base:  # a tf.io.gfile folder (gs://, ram://): generated locally, then copied there
        import tensorflow as tf

        target = f"{base.rstrip('/')}/synthetic/{name}/{file}"
        if not tf.io.gfile.exists(target):
            with tempfile.TemporaryDirectory() as local:
                write_smoke(local)
                tf.io.gfile.makedirs(target.rsplit("/", 1)[0])
                for generated in ("items.csv", "interactions.csv"):
                    tf.io.gfile.copy(os.path.join(local, generated), target.rsplit("/", 1)[0] + "/" + generated,
                                     overwrite=True)
        return target
    folder = os.path.join(base, "synthetic", name)
    target = os.path.join(folder, file)
    if not os.path.exists(target):
        write_smoke(folder)
    return target
