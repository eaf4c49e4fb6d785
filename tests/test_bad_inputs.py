"""The malformed-input corpus (``tests/data/bad/``, described in its README.md) through the real command line.

Every input ends in exactly one of these ways:

* refused: exit code 2 and exactly one line on stderr, ``error: <file, row, column or key>: <what was expected>``;
* skipped and counted: the run finishes, the log says ``data: skipped N <what>`` and ``eval.json``
  ``data.skipped`` holds the same N;
* read correctly: valid but unusual inputs (quoted newlines, a BOM with CRLF line ends, a 100 KB query).

No Python traceback reaches stderr, except under ``--debug``. A representative subset runs
``python -m trainer.task`` in a subprocess (real stderr, real exit code); the rest call ``trainer.task.main``
in-process, which is the same code path without the interpreter start-up.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from trainer import task

REPO = Path(__file__).resolve().parents[1]
BAD = REPO / "tests" / "data" / "bad"
BASE = BAD / "base"
QUICK = ["--set", "train.epochs=1", "--set", "eval.baselines=false", "--set", "export.enabled=false"]
FROZEN = ["--set", "model.query_encoder.trainable_layers=0"]  # encoder outputs cached once: the fastest run
CLI_TIMEOUT = 600


# ------------------------------------------------------------------------------------------------ helpers
def data_config(folder: Path, interactions: Path = BASE / "interactions.csv", items: Path = BASE / "items.csv",
                ) -> Path:
    """A YAML naming the base data set with one of its two files replaced."""
    path = folder / "data.yaml"
    path.write_text(yaml.safe_dump({"data": {
        "interactions": {"path": str(interactions), "query_column": "query", "user_id_column": "user_id",
                         "timestamp_column": "timestamp", "label_column": "rating"},
        "items": {"path": str(items), "text_columns": ["title", "genre"]}}}))
    return path


def args_for(role: str, name: str, folder: Path) -> list[str]:
    """Command-line arguments that feed corpus entry ``name`` to the trainer in its role."""
    target = BAD / name
    if role == "interactions":
        return ["--config", str(data_config(folder, interactions=target))]
    if role == "items":
        return ["--config", str(data_config(folder, items=target))]
    if role == "config":
        return ["--config", str(target)]
    if role == "checkpoint":
        if name == "bert_garbage_weights":
            # The garbage weights file is written here, not committed: no weight files in git.
            import shutil

            target = Path(shutil.copytree(target, folder / name))
            (target / "model.safetensors").write_bytes(b"these bytes are not a safetensors file\n")
        return ["--config", str(data_config(folder)), "--set", f"model.query_encoder.checkpoint={target}"]
    raise ValueError(role)


def run_inprocess(capsys, folder: Path, *args: str) -> tuple[int, str]:
    """``trainer.task.main`` in this process: (exit code, stderr); the log (stdout) is in ``run_inprocess.out``."""
    rc = task.main(["--preset", "smoke", "--job-dir", str(folder / "job"), *QUICK, *args])
    captured = capsys.readouterr()
    run_inprocess.out = captured.out
    return rc, captured.err


def run_cli(folder: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trainer.task", "--preset", "smoke", "--job-dir",
                           str(folder / "job"), *QUICK, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=CLI_TIMEOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def assert_refused(rc: int, err: str, fragments: list[str]) -> None:
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1, f"exit {rc}, stderr:\n{err}"
    assert lines[0].startswith("error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"


# ------------------------------------------------------------------------------------ refusals (exit 2)
# (corpus entry, role, extra arguments, fragments the one stderr line must contain)
REFUSED = [
    ("missing.csv", "interactions", [], ["missing.csv: file not found"]),
    ("empty.csv", "interactions", [], ["empty.csv: file is empty; expected a header row and data rows"]),
    ("header_only.csv", "interactions", [], ["header_only.csv: no data rows (only a header or blank lines)"]),
    ("missing_column.csv", "interactions", [],
     ["missing_column.csv, column 'rating': missing required column 'rating' (found: user_id, item_id, query, "
      "timestamp)"]),
    ("semicolon_delimiter.csv", "interactions", [],
     ["semicolon_delimiter.csv, row 0: the header has one column", "looks semicolon-separated; expected commas"]),
    ("non_utf8.csv", "interactions", [], ["non_utf8.csv: not valid UTF-8 (byte 0xe9 at offset", "line 7)"]),
    ("nan_label.csv", "interactions", [],
     ["nan_label.csv, row 5, column 'rating': expected a finite number, found 'NaN'"]),
    ("inf_label.jsonl", "interactions", [],
     ["inf_label.jsonl, row 7, column 'rating': expected a finite number, found 'inf'"]),
    ("broken_line.jsonl", "interactions", [],
     ["broken_line.jsonl, row 4: not valid JSON", "(set data.max_error_rows to skip such rows)"]),
    ("item_id_list.jsonl", "interactions", [],
     ["item_id_list.jsonl, row 10, column 'item_id': expected a single string, found list"]),
    ("unknown_item.csv", "interactions", ["--set", "data.skip_unknown_items=false"],
     ["unknown_item.csv, row 8, column 'item_id': item 'zz9' is not in the catalog"]),
    ("empty_query.csv", "interactions", ["--set", "data.skip_empty_queries=false"],
     ["empty_query.csv, row 10, column 'query': empty query text"]),
    ("short_row.csv", "interactions", [],
     ["short_row.csv, row 5: expected 5 fields as in the header, found 3"]),
    ("unclosed_quote.csv", "interactions", [],
     ["unclosed_quote.csv, row 20: expected 5 fields", "a quoted field runs from line 21",
      'is a closing quote (") missing?']),
    ("text_timestamp.csv", "interactions", [],
     ["text_timestamp.csv, row 12, column 'timestamp': expected a finite number, found 'yesterday'"]),
    ("too_few_rows.csv", "interactions", [],
     ["too_few_rows.csv: the train split is empty", "more interactions are needed"]),  # time split: timestamps
    ("interactions.csv.gz", "interactions", [], ["interactions.csv.gz: compressed files are not read"]),
    ("not_a_tfrecord.tfrecord", "interactions", [],
     ["not_a_tfrecord.tfrecord: not a TFRecord file or truncated (corrupted record at 0"]),
    ("not_a_model", "interactions", [], ["not_a_model: is a folder; expected a file"]),
    ("items_duplicate_different_text.csv", "items", [],
     ["items_duplicate_different_text.csv, row 10, column 'item_id': duplicate item id 's3' with a different "
      "text than row 4"]),
    ("items_empty_id.csv", "items", [], ["items_empty_id.csv, row 7, column 'item_id': empty item id"]),
    ("items_missing_text_column.csv", "items", [],
     ["items_missing_text_column.csv, column 'title': missing required column 'title' (found: item_id, name, "
      "genre)"]),
    ("unknown_key.yaml", "config", [], ["config key 'train.epochz': unknown key; did you mean 'epochs'?"]),
    ("wrong_type.yaml", "config", [], ["config key 'train.batch_size': expected an integer, got 'big'"]),
    ("out_of_range.yaml", "config", [], ["config key 'data.split.test_fraction': must be in (0, 0.5), got 0.7"]),
    ("infinite_value.yaml", "config", [], ["config key 'train.learning_rate': expected a finite number, got inf"]),
    ("invalid_yaml.yaml", "config", [], ["invalid_yaml.yaml, line 3: not valid YAML"]),
    ("duplicate_key.yaml", "config", [],
     ["duplicate_key.yaml, line 5: not valid YAML (key 'epochs' appears twice (first on line 3))"]),
    ("python_tag.yaml", "config", [],
     ["python_tag.yaml, line 2: not valid YAML (could not determine a constructor for the tag"]),
    ("not_a_mapping.yaml", "config", [], ["not_a_mapping.yaml: expected a YAML mapping at the top level"]),
    ("not_a_model", "checkpoint", [], ["not_a_model: not a BERT checkpoint folder: 'config.json' is missing"]),
    ("bert_garbage_weights", "checkpoint", [],
     ["bert_garbage_weights: could not load the BERT weights (Error while deserializing header",
      "expected a Hugging Face BERT checkpoint"]),
]
# Run as a real subprocess: one per kind of input (file, encoding, config, checkpoint).
CLI = {("missing.csv", "interactions"), ("non_utf8.csv", "interactions"), ("unknown_key.yaml", "config"),
       ("bert_garbage_weights", "checkpoint")}


def _id(case) -> str:
    return f"{case[1]}:{case[0]}" + ("+" + "+".join(a.split("=")[0] for a in case[2][1::2]) if case[2] else "")


@pytest.mark.parametrize("name,role,extra,fragments", [pytest.param(*c, id=_id(c)) for c in REFUSED
                                                      if c[:2] not in CLI])
def test_refused_in_process(name, role, extra, fragments, tmp_path, capsys):
    rc, err = run_inprocess(capsys, tmp_path, *args_for(role, name, tmp_path), *extra)
    assert_refused(rc, err, fragments)
    if name == "python_tag.yaml":  # the tag would have run `touch` under yaml.load / unsafe_load
        assert not Path("/tmp/tfrec-yaml-was-unsafe").exists()


@pytest.mark.parametrize("name,role,extra,fragments", [pytest.param(*c, id=_id(c)) for c in REFUSED if c[:2] in CLI])
def test_refused_by_the_cli(name, role, extra, fragments, tmp_path):
    proc = run_cli(tmp_path, *args_for(role, name, tmp_path), *extra)
    assert_refused(proc.returncode, proc.stderr, fragments)


def test_tfrecord_with_a_wrong_feature_type(tmp_path, capsys):
    """Generated here rather than committed as binary: the label is a bytes feature where a number belongs."""
    import tensorflow as tf

    path = tmp_path / "wrong_type.tfrecord"
    rows = [line.split(",") for line in (BASE / "interactions.csv").read_text().splitlines()[1:]]
    with tf.io.TFRecordWriter(str(path)) as writer:
        for n, (user, item, query, rating, stamp) in enumerate(rows, start=1):
            label = (tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"five"])) if n == 3 else
                     tf.train.Feature(float_list=tf.train.FloatList(value=[float(rating)])))
            feature = {"user_id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[user.encode()])),
                       "item_id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[item.encode()])),
                       "query": tf.train.Feature(bytes_list=tf.train.BytesList(value=[query.encode()])),
                       "rating": label,
                       "timestamp": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(stamp)]))}
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    rc, err = run_inprocess(capsys, tmp_path, "--config", str(data_config(tmp_path, interactions=path)))
    assert_refused(rc, err, ["wrong_type.tfrecord, row 3, column 'rating': expected a finite number, found 'five'"])


def test_debug_shows_the_traceback(tmp_path):
    proc = run_cli(tmp_path, "--config", str(data_config(tmp_path, interactions=BAD / "nan_label.csv")), "--debug")
    assert proc.returncode != 0 and proc.returncode != 2
    assert "Traceback (most recent call last)" in proc.stderr and "DataError" in proc.stderr
    assert "nan_label.csv, row 5, column 'rating'" in proc.stderr


# ------------------------------------------------------------------------ skipped and counted (exit 0)
def assert_skipped(job: Path, log_text: str, key: str, count: int) -> dict:
    report = json.loads((job / "eval.json").read_text())
    assert report["data"]["skipped"].get(key) == count, report["data"]["skipped"]
    assert f"data: skipped {count} {key.replace('_', ' ')}" in log_text
    return report


@pytest.mark.parametrize("name,role,key,count", [
    ("unknown_item.csv", "interactions", "unknown_items", 2),
    ("empty_query.csv", "interactions", "empty_queries", 1),
    ("items_duplicate_same_text.csv", "items", "duplicate_items", 1),
])
def test_skipped_and_counted(name, role, key, count, tmp_path, capsys):
    rc, err = run_inprocess(capsys, tmp_path, *args_for(role, name, tmp_path), *FROZEN)
    assert rc == 0 and "Traceback" not in err, err
    assert_skipped(tmp_path / "job", run_inprocess.out, key, count)


def test_broken_jsonl_line_skipped_when_allowed_by_the_cli(tmp_path):
    proc = run_cli(tmp_path, *args_for("interactions", "broken_line.jsonl", tmp_path), *FROZEN,
                   "--set", "data.max_error_rows=1")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "skipped 1 unreadable rows (first: " in proc.stdout and "broken_line.jsonl, row 4: not valid JSON" \
        in proc.stdout
    report = assert_skipped(tmp_path / "job", proc.stdout, "unreadable_interaction_rows", 1)
    assert report["data"]["counts"]["interactions_read"] == 48


# --------------------------------------------------------------------------- read correctly (exit 0)
@pytest.mark.parametrize("name", ["quoted_newlines.csv", "bom_crlf.csv"])
def test_valid_but_unusual_csv(name, tmp_path, capsys):
    rc, err = run_inprocess(capsys, tmp_path, *args_for("interactions", name, tmp_path), *FROZEN)
    assert rc == 0 and "Traceback" not in err, err
    report = json.loads((tmp_path / "job" / "eval.json").read_text())
    assert report["data"]["counts"]["interactions_read"] == 48  # records, not lines (quoted_newlines has 50)
    assert report["data"]["skipped"] == {}
    if name == "quoted_newlines.csv":
        from tfrec import config
        from tfrec.data import dataset

        cfg = config.build("smoke", str(tmp_path / "data.yaml"))
        cfg = config.updated(cfg, {"data.interactions.path": str(BAD / name)})
        data = dataset.load(cfg.data)
        queries = set(data.train.query_text + data.validation.query_text + data.test.query_text)
        assert {"looking for\nstar and comet", 'looking for "moon", orbit'} <= queries


def test_100kb_query_is_truncated_in_graph(tmp_path, capsys, tiny_encoder):
    text = (BAD / "long_query.csv").read_text().splitlines()[7].split(",")[2]
    assert len(text) == 100 * 1024
    ids, mask = tiny_encoder.tokenize([text, "looking for star"])
    assert ids.shape == (2, tiny_encoder.max_length) and int(mask[0].numpy().sum()) == tiny_encoder.max_length
    # End to end with the smoke preset's fine-tuned encoder: the raw text goes through the training graph.
    rc, err = run_inprocess(capsys, tmp_path, *args_for("interactions", "long_query.csv", tmp_path))
    assert rc == 0 and "Traceback" not in err, err
    report = json.loads((tmp_path / "job" / "eval.json").read_text())
    assert report["data"]["counts"]["interactions_read"] == 48 and report["data"]["skipped"] == {}


# ------------------------------------------------------------------------------------- the corpus itself
def test_every_corpus_entry_is_documented_and_tested():
    entries = {p.name for p in BAD.iterdir()} - {"README.md", "base"}
    tested = {c[0] for c in REFUSED} | {"long_query.csv", "quoted_newlines.csv", "bom_crlf.csv",
                                        "items_duplicate_same_text.csv"}
    assert len(entries) >= 20
    assert entries - {"missing.csv"} <= tested, entries - tested
    readme = (BAD / "README.md").read_text()
    for name in entries | {"missing.csv", "wrong_type.tfrecord"}:
        assert f"`{name}" in readme, name
