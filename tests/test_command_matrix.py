"""Every documented command on a job dir of each query shape: text only, history only, both, and history with a
ranking head.

The commands, with the flags README.md and BUILD.md give them: ``python -m trainer.task``, ``serving.export``,
``serving.reindex``, ``tfrec.export.layout``, ``serving.server`` (started once, one REST request per model),
``serving.client`` (``--list``, REST and ``--grpc``), and the README's Python API block. Each job dir is trained
once per session by ``trainer.task`` on the smoke preset's synthetic shop (1 epoch, tiny random BERT, frozen), with
the export left to the README block's ``fit``, which resumes the finished run and publishes version 1 (the same
code path; one SavedModel write fewer per shape). The answers are held against the exported SavedModel loaded in
this process: what a command serves is what the model itself returns.

The job dirs train without an item id embedding (``model.item_id_embedding_dim=0``): an item is then its text and
genre, so a new item that copies an old one's text and genre must come back from ``serving.reindex`` with exactly
the old one's scores. (With an id embedding the new item's untrained out-of-vocabulary row moves it by a random
amount, and "near" would be a matter of luck on a one-epoch model.)
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import re
import shlex
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import tfrec
from serving import client as client_cli
from serving import export as export_cli
from serving import reindex as reindex_cli
from tests.helpers import doc_snippets as ds
from tfrec.export import layout
from trainer import task

HISTORY = ["data.interactions.query_column=null", "data.interactions.query_history_items=3"]
SHAPES = {"text": [], "history": HISTORY, "both": ["data.interactions.query_history_items=3"],
          "ranking": [*HISTORY, "ranking.weight=1.0"]}
COMMON = ["train.epochs=1", "eval.baselines=[popularity]", "model.query_encoder.trainable_layers=0",
          "model.query_encoder.train_embeddings=false", "model.item_id_embedding_dim=0"]
QUERY_TEXT = "looking for haunted ghost"
HISTORY_IDS = ["item0003", "item0011", "item0042"]  # catalog items of the smoke shop, most recent first


def overrides(shape: str) -> list[str]:
    """The ``--set`` values of ``shape``'s job dir (its export is named after the shape)."""
    return [*COMMON, *SHAPES[shape], f"export.model_name={shape}"]


def query_inputs(shape: str) -> dict[str, list]:
    """One query as the shape's ``serving_default`` reads it (a model with both inputs gets both)."""
    inputs = {}
    if shape in ("text", "both"):
        inputs["query_text"] = [QUERY_TEXT]
    if shape != "text":
        inputs["history_item_ids"] = [HISTORY_IDS]
    return inputs


def documented(doc: str, pattern: str) -> list[str]:
    """The arguments after ``python -m MODULE`` of the one line of ``doc`` that matches ``pattern``."""
    (line,) = [ln for ln in (Path(ds.REPO) / doc).read_text().splitlines() if re.search(pattern, ln)]
    command = re.search(r"python -m [\w.]+ ([^`]*)", line).group(1)
    return shlex.split(command)


def latest(job: Path, shape: str) -> Path:
    base = job / "export" / shape
    return base / str(layout.latest_version(base))


@functools.lru_cache(maxsize=None)
def loaded(version: Path):
    return tfrec.load_export(version)


def served_top(version: Path, shape: str, exclude: list[str] = (), signature: str = "serving_default",
               inputs: dict | None = None) -> list:
    """(item_id, score) pairs of ``version`` loaded in this process for the shape's query (or ``inputs``),
    best first."""
    fn = loaded(version).signatures[signature]
    inputs = {name: tf.constant(value) for name, value in (inputs or query_inputs(shape)).items()}
    out = fn(**inputs, exclude_item_ids=tf.constant([list(exclude) or [""]]))
    scores = out["ranking_scores" if signature == "retrieve_and_rank" else "scores"].numpy()[0]
    return [(i.decode(), float(s)) for i, s in zip(out["item_ids"].numpy()[0], scores)]


@pytest.fixture(scope="session")
def jobs(tmp_path_factory) -> dict[str, Path]:
    """``python -m trainer.task --preset smoke --job-dir DIR --set ...`` once per shape. The export is left to
    the README block's ``fit`` (which resumes the finished run), the same code that would export here."""
    root = tmp_path_factory.mktemp("matrix")
    out = {}
    for shape in SHAPES:
        job = root / shape
        argv = ["--preset", "smoke", "--job-dir", str(job)]
        for value in [*overrides(shape), "export.enabled=false"]:
            argv += ["--set", value]
        assert task.main(argv) == 0, shape
        out[shape] = job
    return out


@pytest.mark.parametrize("shape", SHAPES)
def test_trainer_task_trains_and_evaluates(jobs, shape):
    job = jobs[shape]
    report = json.loads((job / "eval.json").read_text())
    assert set(report["baselines"]) == {"popularity"} and ("ranking" in report) == (shape == "ranking")
    assert report["training"]["epochs_run"] == 1 and (job / "checkpoints" / "best" / "weights.index").is_file()


def block_inputs(shape: str, text: str) -> dict[str, list]:
    """The README block's query for ``shape``: its text, else a history. Called in Python a signature needs every
    input (only a server fills an omitted one with its default), so the model with both also gets an empty
    history."""
    if shape in ("history", "ranking"):
        return {"history_item_ids": [HISTORY_IDS]}
    return {"query_text": [text], **({"history_item_ids": [[""]]} if shape == "both" else {})}


@pytest.fixture(scope="session")
def api_block(jobs) -> dict[str, tuple[str, list[str]]]:
    """The README's Python API block run on each shape's job dir (``fit`` resumes the finished run: evaluation
    and the first export), asking with the inputs the shape reads; ``{shape: (its query text, printed lines)}``."""
    from tests.test_readme_api import readme_example

    out = {}
    for shape, job in jobs.items():
        code = readme_example()
        (text,) = re.findall(r'query_text=tf\.constant\(\["([^"]*)"\]\)', code)
        code = re.sub(r"overrides=\[[^\]]*\]", f"overrides={[*overrides(shape), 'export.enabled=true']!r}", code,
                      count=1)
        code = code.replace('"runs/api-smoke"', repr(str(job)))
        asked = block_inputs(shape, text)
        call = ", ".join(f"{name}=tf.constant({value!r})" for name, value in asked.items())
        code = re.sub(r"query_text=tf\.constant\(\[[^\]]*\]\)", call, code)
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(compile(code, "README.md", "exec"), {})
        out[shape] = text, printed.getvalue().strip().splitlines()
    return out


@pytest.mark.parametrize("shape", SHAPES)
def test_readme_python_api_block(jobs, api_block, shape):
    text, printed = api_block[shape]
    report = json.loads((jobs[shape] / "eval.json").read_text())
    assert [float(x) for x in printed[-2].split()] == [report["model"]["recall@10"],
                                                      report["baselines"]["popularity"]["recall@10"]]
    first = latest(jobs[shape], shape)
    assert first.name == "1"  # the run's own export (the job dir was trained with export.enabled=false)
    signatures = loaded(first).signatures
    assert set(signatures["serving_default"].structured_input_signature[1]) == {*query_inputs(shape),
                                                                                 "exclude_item_ids"}
    assert ("retrieve_and_rank" in signatures) == (shape == "ranking")
    expected = served_top(first, shape, inputs=block_inputs(shape, text))
    assert re.findall(r"b'([^']*)'", printed[-1]) == [i for i, _ in expected[:5]]


@pytest.mark.parametrize("shape", SHAPES)
def test_serving_export_republishes_the_same_model(jobs, api_block, shape):
    job = jobs[shape]
    before = latest(job, shape)
    args = documented("BUILD.md", r"^To re-export from a finished run without retraining")
    assert args == ["--job-dir", "runs/movielens"]
    assert export_cli.main(["--job-dir", str(job)]) == 0
    after = latest(job, shape)
    assert int(after.name) == int(before.name) + 1
    old, new = served_top(before, shape), served_top(after, shape)
    assert [i for i, _ in new] == [i for i, _ in old]  # the best epoch's weights, rebuilt from the job dir
    np.testing.assert_allclose([s for _, s in new], [s for _, s in old], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
def test_serving_reindex_serves_a_new_item_where_its_twin_is(jobs, api_block, shape, tmp_path):
    job = jobs[shape]
    before = latest(job, shape)
    (twin, twin_score), *_ = served_top(before, shape)
    items = (job / "synthetic" / "smoke-v2" / "items.csv").read_text().splitlines()
    (row,) = [r for r in items if r.startswith(f"{twin},")]
    # The catalog may already hold copies of the twin (same text and genre: the same embedding, bit for bit).
    copies = {r.split(",", 1)[0] for r in items[1:] if r.split(",", 1)[1] == row.split(",", 1)[1]}
    (tmp_path / "new_items.csv").write_text("\n".join(items + [row.replace(twin, "new9999", 1)]) + "\n")
    args = documented("BUILD.md", r"python -m serving.reindex --job-dir DIR --items new_items.csv")
    assert args[:4] == ["--job-dir", "DIR", "--items", "new_items.csv"]
    assert reindex_cli.main(["--job-dir", str(job), "--items", str(tmp_path / "new_items.csv")]) == 0

    after = latest(job, shape)
    assert int(after.name) == int(before.name) + 1
    report = json.loads((after / "assets.extra" / "export_report.json").read_text())
    assert report["data"]["items"] == 161 and report["data"]["new_items"] == 1
    top = served_top(after, shape)
    ids, scores = [i for i, _ in top], dict(top)
    # The new item has its twin's text and genre: the same embedding and the same words, so the same score as the
    # twin and its copies (any other new row, or one embedded from another item's text, would land elsewhere).
    assert copies | {"new9999"} <= set(ids)
    np.testing.assert_allclose([scores[i] for i in copies], scores["new9999"], rtol=1e-5, atol=1e-6)
    # Equal scores go by training popularity, then catalog row: the new item, with no interactions and the last
    # row, comes right after its equals.
    at = ids.index("new9999")
    assert all(s >= scores["new9999"] - 1e-6 for _, s in top[:at])
    assert all(s < scores["new9999"] for _, s in top[at + 1:])
    if (json.loads((job / "eval.json").read_text()).get("hybrid") or {}).get("weight") is None:
        # Dense scores do not depend on the catalog: the twins lead, the rest keeps its order and the twin its
        # score. (A hybrid export's BM25 idf and score normalisation move with the catalog, and BM25 alone may
        # tie other items with the twin, so only the twins' tie holds there.)
        n = len(copies)
        assert set(ids[:n + 1]) == copies | {"new9999"}
        np.testing.assert_allclose(top[0][1], twin_score, rtol=1e-5, atol=1e-6)
        assert ids[n + 1:] == [i for i, _ in served_top(before, shape)[n:len(top) - 1]]


@pytest.mark.parametrize("shape", SHAPES)
def test_layout_command_writes_a_models_config_for_the_container(jobs, api_block, shape, capsys):
    job = jobs[shape]
    args = documented("BUILD.md", r"python -m tfrec.export.layout ")
    assert args == ["runs/movielens/export", "--base_path", "/models", "--output",
                    "runs/movielens/export/models.docker.config"]
    output = job / "export" / "models.docker.config"
    assert layout.main([str(job / "export"), "--base_path", "/models", "--output", str(output)]) == 0
    assert capsys.readouterr().out.strip() == f"{output}: {shape} under /models"
    assert layout.read_models_config(output) == {shape: f"/models/{shape}"}


@pytest.fixture(scope="session")
def server(jobs, api_block, tmp_path_factory):
    """The documented ``serving.server`` line over one folder holding every shape's model (its models.config
    written by ``python -m tfrec.export.layout``); yields ``{8500: grpc port, 8501: rest port}``."""
    root = tmp_path_factory.mktemp("served")
    export = root / "export"
    export.mkdir()
    for shape, job in jobs.items():
        (export / shape).symlink_to(job / "export" / shape, target_is_directory=True)
    assert layout.main([str(export)]) == 0
    layout.write_batching_parameters(export)
    (line,) = [c for c in ds.commands(ds.snippet("BUILD.md", "local-server-client")) if " -m serving.server " in c]
    ports = {8500: ds.free_port(), 8501: ds.free_port()}
    line = ds.with_ports(line.replace("runs/movielens/export", str(export)), ports)
    process = ds.start_documented_server(line, root, ds.scratch(root))
    try:
        ds.wait_available(process, ports[8501], list(SHAPES))
        yield ports
    finally:
        code, log = ds.stop(process)
        assert code == 0, log[-2000:]


def client_lines(shape: str) -> list[list[str]]:
    """The documented client lines, with this shape's query: ``--history`` ids where it reads a history."""
    lines = [shlex.split(c.split(" -m serving.client ", 1)[1])
             for c in ds.commands(ds.snippet("BUILD.md", "local-server-client")) if " -m serving.client " in c]
    assert [ln[0] for ln in lines] == ["--list", "--history", "--history"]
    query = (["--query", QUERY_TEXT] if shape in ("text", "both") else []) + (
        ["--history", *HISTORY_IDS] if shape != "text" else [])
    for ln in lines[1:]:
        ids = next(i for i, a in enumerate(ln[1:], 1) if a.startswith("--"))  # the documented history's ids
        ln[:ids] = query
    return lines


def printed_ids(out: str) -> list[str]:
    return [m.group(1) for m in re.finditer(r"^\s*\d+\s+(\S+)\s+-?\d", out, re.M)]


@pytest.mark.parametrize("shape", SHAPES)
def test_server_and_client_answer_what_the_model_returns(jobs, server, shape, capsys):
    job, version = jobs[shape], latest(jobs[shape], shape)
    listing, rest, grpc = client_lines(shape)
    ports = {"8500": str(server[8500]), "8501": str(server[8501])}

    def run(args: list[str]) -> str:
        args = [ports.get(a, a) for a in args]
        args = [{"movielens": shape, "movielens_scann": shape, "runs/movielens": str(job)}.get(a, a) for a in args]
        assert client_cli.main(args) == 0, capsys.readouterr().err
        return capsys.readouterr().out

    assert run(listing).splitlines()[0] == f"{shape}: version {version.name}"
    best = served_top(version, shape)[0][0]
    rest[rest.index("--exclude") + 1] = best  # the documented id is a movie; exclude this model's best item
    expected = [i for i, _ in served_top(version, shape, exclude=[best])]
    assert best not in expected and printed_ids(run(rest)) == expected[:10]
    assert printed_ids(run(grpc)) == [i for i, _ in served_top(version, shape)]

    instance = {name: value[0] for name, value in query_inputs(shape).items()}
    request = urllib.request.Request(f"http://127.0.0.1:{server[8501]}/v1/models/{shape}:predict",
                                     data=json.dumps({"instances": [instance]}).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=60) as answer:
        (prediction,) = json.loads(answer.read())["predictions"]
    assert prediction["item_ids"] == [i for i, _ in served_top(version, shape)]
    if shape == "ranking":
        ranked = run([*rest[:rest.index("--k")], "--signature_name", "retrieve_and_rank", "--port", ports["8501"],
                      "--model_name", shape])
        assert printed_ids(ranked) == [i for i, _ in served_top(version, shape, signature="retrieve_and_rank")]
