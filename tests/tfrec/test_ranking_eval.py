"""tfrec/ranking_eval.py: regression and binary label metrics, label baselines and re-ranking, by hand."""

import json
import math

import numpy as np
import tensorflow as tf

from tfrec import ranking_eval


def test_regression_metrics_by_hand():
    # errors [1, 0, 2] -> RMSE sqrt(5 / 3) = 1.290994, MAE 1.
    m = ranking_eval.regression_metrics(np.array([1.0, 2.0, 3.0]), np.array([2.0, 2.0, 5.0]))
    assert math.isclose(m["rmse"], math.sqrt(5 / 3), rel_tol=1e-9) and math.isclose(m["mae"], 1.0)


def test_auc_and_logloss_by_hand():
    # Positives score 0.9 and 0.3, negatives 0.8 and 0.3. Pairs (pos, neg):
    # (0.9, 0.8) win, (0.9, 0.3) win, (0.3, 0.8) loss, (0.3, 0.3) tie = 1/2 -> 2.5 / 4 = 0.625.
    y, p = np.array([1, 0, 1, 0]), np.array([0.9, 0.8, 0.3, 0.3])
    assert math.isclose(ranking_eval.auc(y, p), 0.625)
    # log-loss: -(ln 0.9 + ln 0.2 + ln 0.3 + ln 0.7) / 4 = 0.8060...
    expected = -(math.log(0.9) + math.log(0.2) + math.log(0.3) + math.log(0.7)) / 4
    assert math.isclose(ranking_eval.binary_metrics(y, p)["logloss"], expected, rel_tol=1e-9)
    assert math.isnan(ranking_eval.auc(np.array([1, 1]), np.array([0.1, 0.2])))


def test_label_baselines_by_hand():
    # Train: a -> 5, 3; b -> 2. Global mean 10/3; item means a 4, b 2, c (unseen) 10/3.
    # Test (a 4, b 2, c 3): item_mean errors [0, 0, 1/3] -> RMSE sqrt(1/27) = 0.19245, MAE 1/9;
    # global errors [-2/3, 4/3, 1/3] -> RMSE sqrt(7/9) = 0.881917, MAE 7/9.
    out = ranking_eval.label_baselines(["a", "a", "b"], np.array([5.0, 3.0, 2.0]), ["a", "b", "c"],
                                  np.array([4.0, 2.0, 3.0]), "regression")
    assert math.isclose(out["item_mean"]["rmse"], math.sqrt(1 / 27), rel_tol=1e-9)
    assert math.isclose(out["item_mean"]["mae"], 1 / 9, rel_tol=1e-9)
    assert math.isclose(out["global_mean"]["rmse"], math.sqrt(7 / 9), rel_tol=1e-9)
    assert math.isclose(out["global_mean"]["mae"], 7 / 9, rel_tol=1e-9)
    # Binary: item click-through rates a 1/2, b 0 (clipped), c 1/3.
    out = ranking_eval.label_baselines(["a", "a", "b"], np.array([1.0, 0.0, 0.0]), ["a", "b", "c"],
                                  np.array([1.0, 0.0, 1.0]), "binary")
    assert set(out) == {"global_rate", "item_ctr"}
    expected = -(math.log(0.5) + math.log(1 - 1e-7) + math.log(1 / 3)) / 3
    assert math.isclose(out["item_ctr"]["logloss"], expected, rel_tol=1e-6)


class SecondCoordinateHead:
    """A stand-in head: the ranking score of a pair is the item's second coordinate."""

    def score(self, query_embeddings, item_embeddings, item_features=None):
        return item_embeddings[:, 1]


def test_reranking_ndcg_by_hand():
    # Query [1, 0] . item [s, r] = s, so retrieval orders items 0..4 by s; the head orders by r (reversed).
    items = np.array([[0.5, 0.1], [0.4, 0.2], [0.3, 0.3], [0.2, 0.4], [0.1, 0.5]], np.float32)
    queries = np.array([[1.0, 0.0]] * 3, np.float32)
    targets = np.array([2, 4, 1])
    out = ranking_eval.reranking_ndcg(SecondCoordinateHead(), queries, items, targets, candidates=3, k=2)
    # Top 3 = items {0, 1, 2}: the target 4 of query 2 is not among them -> 2 queries remain.
    # Query 1 (target 2): retrieval rank 3 -> 0; by r the order is 2, 1, 0 -> rank 1 -> 1.
    # Query 3 (target 1): rank 2 in both -> 1/log2(3) = 0.630930.
    assert out["queries"] == 2 and math.isclose(out["share"], 2 / 3)
    assert math.isclose(out["ndcg@2_retrieval"], (0 + 1 / math.log2(3)) / 2, rel_tol=1e-6)
    assert math.isclose(out["ndcg@2_reranked"], (1 + 1 / math.log2(3)) / 2, rel_tol=1e-6)
    assert out["recall@2_retrieval"] == 0.5 and out["recall@2_reranked"] == 1.0
    # Excluding item 0 for query 1 makes the top 3 {1, 2, 3}: target 2 ranks 2 by s and 2 by r.
    out = ranking_eval.reranking_ndcg(SecondCoordinateHead(), queries[:1], items, targets[:1], candidates=3, k=2,
                                 exclude=[np.array([0])])
    assert math.isclose(out["ndcg@2_retrieval"], 1 / math.log2(3)) and out["recall@2_reranked"] == 1.0


# ------------------------------------------------------------ end to end
def test_trainer_writes_ranking_eval_and_tensorboard(tmp_path):
    from trainer import task

    job = tmp_path / "job"
    assert task.main(["--preset", "smoke", "--job-dir", str(job), "--set", "ranking.weight=1.0",
                      "--set", "ranking.objective=binary", "--set", "train.epochs=1",
                      "--set", "eval.baselines=false", "--set", "export.enabled=false"]) == 0
    report = json.loads((job / "eval.json").read_text())["ranking"]
    assert report["objective"] == "binary" and report["pairs"] == 60
    assert set(report["model"]) == {"auc", "logloss"} and set(report["baselines"]) == {"global_rate", "item_ctr"}
    assert 0 < report["reranking"]["queries"] <= 60 and "ndcg@10_reranked" in report["reranking"]
    tags = set()
    for path in (job / "tensorboard" / "train").rglob("events.out.tfevents.*"):
        for record in tf.data.TFRecordDataset(str(path)):
            tags.update(v.tag for v in tf.compat.v1.Event.FromString(record.numpy()).summary.value)
    assert {"epoch_loss", "epoch_batch_recall@10", "epoch_ranking_auc", "epoch_ranking_logloss"} <= tags
    val_tags = set()  # and every epoch on the validation pairs, next to val recall
    for path in (job / "tensorboard" / "validation").rglob("events.out.tfevents.*"):
        for record in tf.data.TFRecordDataset(str(path)):
            val_tags.update(v.tag for v in tf.compat.v1.Event.FromString(record.numpy()).summary.value)
    assert {"epoch_recall@10", "epoch_auc", "epoch_logloss"} <= val_tags, val_tags
