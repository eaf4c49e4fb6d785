"""How each stage's cost grows with the data: the real trainer on synthetic shops of growing size.

    nice -n 5 .venv/bin/python bench/scale.py [--sizes 1e5x1e4,1e6x1e5] [--large] [--out DIR]

For each size (interactions x items) a seeded shop is generated
(:func:`tfrec.data.synthetic.write_shop`: Zipf-like popularity, titles and
categories, text queries, per-user histories; cached under ``--out``) and
``python -m trainer.task`` runs on it as a user would: the smoke preset with a
frozen tiny random BERT (``random://tiny``, so the framework's own cost shows,
not BERT's), one epoch, batch 1024, every baseline, the index and the export.
``--large`` adds 10^7 interactions x 10^6 items. ``--stream`` trains from
TFRecord shards (``data.interactions.streaming``, no query-encoding cache, as
it would hold every distinct training query) so that peak RSS need not grow
with the interactions; its held-out files are the last two interactions of
50,000 seeded users at every size (validation and test stay in memory and are
evaluated in full), and it prints ``ratio peak_rss 1e7/1e6: X``, the largest
size's peak RSS during training over the smallest's:

    nice -n 5 .venv/bin/python bench/scale.py --stream --sizes 1e6x1e5,1e7x1e5

Each run writes ``timings.json`` (:mod:`tfrec.timings`: wall time and peak RSS
per stage: read, encode, train per epoch, validation, evaluate, each
baseline, index, export); a trainer without it is timed from its log lines
(one-second resolution). The script prints one table row per size and stage
(seconds, examples/s, peak RSS MB, share of the run), then each stage's growth
exponent: the least-squares slope of log(seconds) on log(interactions) over
the sizes (1 = linear; items grow with interactions here), and per size
``ratio evaluation_and_baselines/training: X`` (evaluate plus every baseline,
over all training epochs with their validation) and
``ratio largest_evaluation_or_baseline_stage/training: X (stage)`` (the
costliest of them alone; the rule is that no stage costs more than training,
so <= 1 is the goal). It writes
all of it to ``--out/scale.json`` and ``--out/scale.png`` when matplotlib is
installed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tfrec.timings import NESTED  # noqa: E402  (light: no TensorFlow in the benchmark's own process)

DEFAULT_SIZES = "1e5x1e4,1e6x1e5"
LARGE_SIZES = "1e7x1e6"
HELD_OUT_USERS = 50_000  # --stream: validation and test rows (one per user each), fixed so only training grows


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """``"1e5x1e4,1e6x1e5"`` -> [(100000, 10000), (1000000, 100000)]."""
    sizes = []
    for part in filter(None, text.split(",")):
        n, _, items = part.partition("x")
        sizes.append((int(float(n)), int(float(items))))
    return sizes


def shop_arguments(interactions: int, items: int, seed: int, stream: bool) -> dict:
    """``synthetic.write_shop``'s arguments: streamed shops get TFRecord training shards (one per 250,000 rows)
    and held-out files of at most ``HELD_OUT_USERS`` users, the same at every size."""
    args = {"num_interactions": interactions, "num_items": items, "seed": seed}
    if stream:
        args.update(held_out_files=True, held_out_users=HELD_OUT_USERS, train_shards=max(1, interactions // 250_000))
    return args


def make_shop(root: Path, interactions: int, items: int, seed: int, stream: bool = False) -> Path:
    """The shop's folder, generated once per (size, seed); with ``stream`` its training rows as TFRecord shards.

    Generated in a child process: a trainer started later by this process would otherwise inherit the
    generator's memory high-water mark in its ``ru_maxrss`` (Linux carries it across ``exec``).
    """
    folder = root / "data" / f"shop-{interactions}x{items}-seed{seed}{f'-held{HELD_OUT_USERS}' if stream else ''}"
    if not (folder / ("shards" if stream else "interactions.csv")).exists():
        started = time.time()
        code = ("import json, sys; from tfrec.data import synthetic; "
                "print(json.dumps(synthetic.write_shop(sys.argv[1], **json.loads(sys.argv[2]))))")
        out = subprocess.run([sys.executable, "-c", code, str(folder),
                              json.dumps(shop_arguments(interactions, items, seed, stream))],
                             cwd=str(REPO), check=True, stdout=subprocess.PIPE, text=True).stdout
        counts = json.loads(out.strip().splitlines()[-1])
        print(f"generated {folder} ({', '.join(f'{v} {k}' for k, v in counts.items())}) in "
              f"{time.time() - started:.0f}s", flush=True)
    return folder


def trainer_command(shop: Path, job: Path, batch_size: int, extra: list[str], stream: bool = False) -> list[str]:
    if stream:  # training rows read shard by shard; no query cache (it would hold every distinct training query)
        data = [f"data.interactions.path={shop / 'shards' / 'train-*.tfrecord'}", "data.interactions.streaming=true",
                "data.split.method=files", f"data.split.validation_path={shop / 'validation.csv'}",
                f"data.split.test_path={shop / 'test.csv'}", "train.cache_frozen_encoders=false"]
    else:
        data = [f"data.interactions.path={shop / 'interactions.csv'}"]
    sets = [*data, f"data.items.path={shop / 'items.csv'}",
            "data.items.text_columns=[title, category]", "data.items.categorical_columns=[category]",
            "model.query_encoder.checkpoint=random://tiny", "model.query_encoder.trainable_layers=0",
            "model.embedding_dim=64", "model.hidden_units=[64]", "model.item_id_embedding_dim=16",
            "train.epochs=1", f"train.batch_size={batch_size}", "train.learning_rate=0.001",
            "eval.ks=[10, 100]", "export.k=100", *extra]
    cmd = [sys.executable, "-m", "trainer.task", "--preset", "smoke", "--job-dir", str(job)]
    for s in sets:
        cmd += ["--set", s]
    return cmd


def run_trainer(cmd: list[str], log_path: Path) -> tuple[float, float, int]:
    """Runs the trainer; returns (wall seconds, peak RSS MB of the child, exit code)."""
    started = time.time()
    with open(log_path, "w") as log:
        child = subprocess.Popen(cmd, cwd=str(REPO), stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    return time.time() - started, usage.ru_maxrss / 1024.0, child.returncode


def _log_times(log_path: Path) -> list[tuple[float, str]]:
    out = []
    for line in log_path.read_text(errors="replace").splitlines():
        m = re.match(r"^(\d\d):(\d\d):(\d\d) (.*)$", line)
        if m:
            out.append((int(m[1]) * 3600 + int(m[2]) * 60 + int(m[3]), m[4]))
    return out


def timings_from_log(log_path: Path) -> dict:
    """Stage seconds from the log's time stamps, for a trainer that writes no timings.json (coarse)."""
    lines = _log_times(log_path)
    if not lines:
        return {"stages": {}}

    def first(prefix: str) -> float | None:
        return next((t for t, msg in lines if msg.startswith(prefix)), None)

    marks = [("read", first("strategy:"), first("data:")), ("encode", first("data:"), first("train:")),
             ("train", first("train:"), first("train: kept")), ("evaluate", first("train: kept"), first("eval: wrote")),
             ("export", first("eval: wrote"), first("done in"))]
    stages = {name: {"seconds": float(b - a), "calls": 1} for name, a, b in marks if a is not None and b is not None}
    return {"stages": stages, "source": "log"}


def examples_for(stage: str, counts: dict) -> int | None:
    """How many examples a stage processes (when timings.json does not say)."""
    return {"read": counts.get("interactions"), "train": counts.get("train"), "index": counts.get("items"),
            "export": counts.get("items"), "evaluate": counts.get("test")}.get(stage)


def rows_for_run(interactions: int, items: int, timings: dict, wall: float, peak_mb: float, counts: dict) -> list:
    rows = []
    total = sum(v["seconds"] for k, v in timings["stages"].items() if k not in NESTED) or wall
    for stage, v in timings["stages"].items():
        calls = max(v.get("calls", 1), 1)
        seconds = v["seconds"] / calls if stage in ("train", "validation") else v["seconds"]  # per epoch
        n = v.get("examples")
        n = n / calls if n is not None and stage in ("train", "validation") else n
        if n is None:
            n = examples_for(stage, counts)
        rows.append({"interactions": interactions, "items": items, "stage": stage, "seconds": round(seconds, 2),
                     "examples_per_s": round(n / seconds, 1) if n and seconds > 0 else None,
                     "peak_rss_mb": v.get("peak_rss_mb"), "share": round(v["seconds"] / total, 3) if total else None,
                     "note": v.get("note")})
    rows.append({"interactions": interactions, "items": items, "stage": "total", "seconds": round(wall, 1),
                 "examples_per_s": round(interactions / wall, 1), "peak_rss_mb": round(peak_mb, 1), "share": 1.0,
                 "note": None})
    return rows


def growth_exponents(rows: list[dict]) -> dict[str, float]:
    """Per stage: the least-squares slope of log(seconds) on log(interactions) (needs two sizes)."""
    out = {}
    for stage in dict.fromkeys(r["stage"] for r in rows):
        pts = [(math.log(r["interactions"]), math.log(r["seconds"])) for r in rows
               if r["stage"] == stage and r["seconds"] and r["seconds"] > 0]
        if len({x for x, _ in pts}) < 2:
            continue
        mx, my = sum(x for x, _ in pts) / len(pts), sum(y for _, y in pts) / len(pts)
        out[stage] = round(sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts), 2)
    return out


def _evaluation_stages(timings: dict) -> tuple[float | None, dict[str, float]]:
    """(training seconds, all epochs with their validation; evaluate and each baseline -> seconds)."""
    stages = timings["stages"]
    spent = {k: v["seconds"] for k, v in stages.items() if k == "evaluate" or k.startswith("baseline:")}
    return stages.get("train", {}).get("seconds"), spent


def evaluation_ratio(timings: dict) -> float | None:
    """(evaluate + every baseline) seconds / training seconds (all epochs, validation included)."""
    train, spent = _evaluation_stages(timings)
    return sum(spent.values()) / train if train else None


def largest_stage_ratio(timings: dict) -> tuple[str, float] | None:
    """The costliest of evaluate and each baseline, and its seconds / training seconds: the rule is that no
    such stage costs more than training (:func:`evaluation_ratio` sums them all, a stricter summary)."""
    train, spent = _evaluation_stages(timings)
    if not train or not spent:
        return None
    name = max(spent, key=spent.get)
    return name, spent[name] / train


def size_name(n: int) -> str:
    """10000000 -> "1e7", 300000 -> "3e5"."""
    mantissa, exponent = f"{n:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def peak_rss_ratio(small: dict, large: dict) -> str:
    """``ratio peak_rss LARGE/SMALL: X``: peak RSS while training (the ``train`` stage's own high-water mark in
    ``timings.json``) of the larger run over the smaller's, and the same for the whole run."""
    def train_peak(run: dict) -> float:
        return run["timings"]["stages"].get("train", {}).get("peak_rss_mb") or run["peak_rss_mb"]

    a, b = train_peak(small), train_peak(large)
    return (f"ratio peak_rss {size_name(large['interactions'])}/{size_name(small['interactions'])}: {b / a:.2f} "
            f"(training {b:.0f} MB / {a:.0f} MB; whole run {large['peak_rss_mb'] / small['peak_rss_mb']:.2f}: "
            f"{large['peak_rss_mb']:.0f} MB / {small['peak_rss_mb']:.0f} MB)")


def format_table(rows: list[dict], exponents: dict[str, float]) -> str:
    head = (f"{'interactions':>12} {'items':>8}  {'stage':<22} {'seconds':>9} {'examples/s':>11} {'peak MB':>8} "
            f"{'share':>6}")
    lines = [head]
    for r in rows:
        eps = f"{r['examples_per_s']:,.0f}" if r["examples_per_s"] else "-"
        rss = f"{r['peak_rss_mb']:.0f}" if r["peak_rss_mb"] else "-"
        note = f"  ({r['note']})" if r.get("note") else ""
        lines.append(f"{r['interactions']:>12,} {r['items']:>8,}  {r['stage']:<22} {r['seconds']:>9.2f} {eps:>11} "
                     f"{rss:>8} {100 * (r['share'] or 0):>5.0f}%{note}")
    if exponents:
        lines.append("growth exponent (slope of log seconds on log interactions): "
                     + ", ".join(f"{k}={v:.2f}" for k, v in exponents.items()))
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> bool:
    try:  # optional: the table is the result, the plot an extra
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 5))
    for stage in dict.fromkeys(r["stage"] for r in rows):
        pts = [(r["interactions"], r["seconds"]) for r in rows if r["stage"] == stage and r["seconds"]]
        if pts:
            ax.loglog(*zip(*pts), marker="o", label=stage)
    ax.set_xlabel("interactions")
    ax.set_ylabel("seconds")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help="interactions x items, comma separated")
    parser.add_argument("--large", action="store_true", help=f"also run {LARGE_SIZES}")
    parser.add_argument("--stream", action="store_true",
                        help="stream the training interactions from TFRecord shards (data.interactions.streaming)")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join("/tmp", "tfrec-scale"))
    parser.add_argument("--set", action="append", default=[], help="extra trainer override, repeatable")
    args = parser.parse_args(argv)
    sizes = parse_sizes(args.sizes + ("," + LARGE_SIZES if args.large else ""))
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    rows, runs = [], []
    for interactions, items in sizes:
        shop = make_shop(root, interactions, items, args.seed, args.stream)
        job = root / "jobs" / f"{interactions}x{items}{'-stream' if args.stream else ''}"
        shutil.rmtree(job, ignore_errors=True)  # a fresh run: nothing resumed, nothing cached
        log_path = root / f"run-{interactions}x{items}{'-stream' if args.stream else ''}.log"
        wall, peak_mb, code = run_trainer(trainer_command(shop, job, args.batch_size, args.set, args.stream), log_path)
        if code != 0:
            print(f"trainer failed at {interactions}x{items} (exit {code}); see {log_path}", file=sys.stderr)
            return 1
        timings_path = job / "timings.json"
        timings = json.loads(timings_path.read_text()) if timings_path.exists() else timings_from_log(log_path)
        counts = json.loads((job / "eval.json").read_text())["data"]["counts"]
        counts["interactions"] = interactions
        run_rows = rows_for_run(interactions, items, timings, wall, peak_mb, counts)
        print(format_table(run_rows, {}), flush=True)  # each size as it finishes: a long run shows what it has
        rows += run_rows
        runs.append({"interactions": interactions, "items": items, "wall_seconds": round(wall, 1),
                     "peak_rss_mb": round(peak_mb, 1), "counts": counts, "timings": timings, "log": str(log_path)})
        print(f"ran {interactions:,} x {items:,}: {wall:.0f}s, peak RSS {peak_mb:.0f} MB", flush=True)
    exponents = growth_exponents(rows)
    print("\n" + format_table(rows, exponents), flush=True)
    for run in runs:
        ratio = evaluation_ratio(run["timings"])
        if ratio is not None:
            run["evaluation_over_training"] = round(ratio, 3)
            print(f"ratio evaluation_and_baselines/training at {run['interactions']:.0e}x{run['items']:.0e}: "
                  f"{ratio:.2f}")
        largest = largest_stage_ratio(run["timings"])
        if largest is not None:
            run["largest_stage_over_training"] = [largest[0], round(largest[1], 3)]
            print(f"ratio largest_evaluation_or_baseline_stage/training at {run['interactions']:.0e}x"
                  f"{run['items']:.0e}: {largest[1]:.2f} ({largest[0]})")
    if args.stream and len(runs) > 1:
        ratio_line = peak_rss_ratio(runs[0], runs[-1])
        runs[-1]["peak_rss_ratio"] = ratio_line
        print(ratio_line)
    (root / "scale.json").write_text(json.dumps({"rows": rows, "growth_exponents": exponents, "runs": runs},
                                                indent=2))
    print(f"wrote {root / 'scale.json'}" + (f" and {root / 'scale.png'}" if plot(rows, root / "scale.png") else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
