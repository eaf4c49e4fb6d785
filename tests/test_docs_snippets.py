"""The serving snippets of README.md and BUILD.md, run as written (blocks found by ``<!-- snippet: NAME``
markers, so a changed block is what runs here, not a copy).

Each runs in a scratch folder holding ``runs/movielens/export`` built from the tiny test SavedModel
(``tests/helpers/tiny_model.py``) under the documented model names, with ``.venv/bin/python`` pointing at
this interpreter; the documented ports are swapped for free ones. There is no docker here, so a
``docker run`` line is checked for what can be checked: the folders it mounts hold what the container
expects, and the command line the ``tensorflow/serving`` image would run (its entrypoint's flags and the
line's own, paths seen through the mounts) starts ``serving.server``, which then answers the requests
documented beside it. The README's Python API block is run by tests/test_readme_api.py.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys

import pytest
import tensorflow as tf

from tests.helpers import doc_snippets as ds

@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A scratch folder with runs/movielens/export: movielens and movielens_scann (the tiny model, seed 1),
    models.config and batching_parameters.txt, as a training run's export leaves them."""
    from tests.helpers.tiny_model import write_tiny_model
    from tfrec.export import layout

    root = tmp_path_factory.mktemp("docs")
    export = root / "runs" / "movielens" / "export"
    layout.publish_version(export / "movielens", lambda d: write_tiny_model(d, seed=1))
    layout.publish_version(export / "movielens_scann", lambda d: write_tiny_model(d, seed=1, scann=True))
    layout.write_models_config(export, ["movielens", "movielens_scann"])
    layout.write_batching_parameters(export, max_batch_size=8)
    return root, ds.scratch(root)


@pytest.fixture(scope="module")
def direct(workdir):
    """The tiny SavedModel called in-process: the reference answers."""
    root, _ = workdir
    fn = tf.saved_model.load(str(root / "runs" / "movielens" / "export" / "movielens" / "1")).signatures["retrieve"]

    def retrieve(query: str, exclude: list[str] = ()) -> list[str]:
        out = fn(query_text=tf.constant([query]), exclude_item_ids=tf.constant([list(exclude) or [""]]))
        return [i.decode() for i in out["item_ids"].numpy()[0]]
    return retrieve


def test_local_server_and_client_block(workdir, direct):
    """BUILD.md "The local server and client": the server line, then each client line against it."""
    root, env = workdir
    server_line, *client_lines = ds.commands(ds.snippet("BUILD.md", "local-server-client"))
    assert " -m serving.server " in server_line and all(" -m serving.client " in c for c in client_lines)
    ports = {8500: ds.free_port(), 8501: ds.free_port()}
    server = ds.start_documented_server(ds.with_ports(server_line, ports), root, env)
    try:
        ds.wait_available(server, ports[8501], ["movielens", "movielens_scann"])
        outputs = []
        for line in client_lines:
            done = ds.run(ds.with_ports(line, ports), root, env)
            assert done.returncode == 0, f"{line}\n{done.stderr[-2000:]}"
            outputs.append((line, done.stdout.splitlines()))
    finally:
        code, log = ds.stop(server)
    assert code == 0, log[-2000:]

    texts = dict(ln.split("\t") for ln in (root / "runs/movielens/export/movielens/1/assets.extra/items.tsv")
                 .read_text().splitlines()[1:])
    for line, out in outputs:
        if "--list" in line:
            assert [ln for ln in out if not ln.startswith(" ")] == ["movielens: version 1",
                                                                    "movielens_scann: version 1"]
            assert any(ln.startswith("  serving_default: ") for ln in out)
            continue
        query = re.search(r'--query "([^"]+)"', line).group(1)
        exclude = re.findall(r"--exclude (\S+)", line)
        assert out[0] == f"query: {query}"
        rows = [ln.split() for ln in out[1:]]
        want = direct(query, exclude)
        assert [r[1] for r in rows] == want[:len(rows)] and len(rows) == min(len(want), 10)
        if "--job-dir" in line:  # the item texts come from the export's assets.extra/items.tsv
            assert all(ln.endswith(texts[r[1]]) for ln, r in zip(out[1:], rows))


def test_saved_model_cli_line(workdir):
    """BUILD.md's `saved_model_cli show ...` line lists the signatures it describes."""
    root, env = workdir
    build = (ds.REPO / "BUILD.md").read_text(encoding="utf-8")
    line = re.search(r"`(saved_model_cli show [^`]+)`", build).group(1)
    done = ds.run(line, root, env)
    assert done.returncode == 0, done.stderr[-2000:]
    for name in ("serving_default", "embed_query", "embed_item"):  # the signatures BUILD.md names next to it
        assert f"signature_def['{name}']" in done.stdout


def test_docker_one_model_block(workdir, direct):
    """BUILD.md's first `docker run`: the mounted model folder, the container's flags, then the curl request."""
    root, env = workdir
    docker_line, curl_line = ds.commands(ds.snippet("BUILD.md", "docker-one-model"))
    docker = ds.DockerRun.parse(docker_line, root)
    assert docker.image == ds.IMAGE
    flags = docker.server_flags()
    base = next(f.split("=", 1)[1] for f in flags if f.startswith("--model_base_path="))
    host_base = docker.host_path(base)  # the folder the container serves: TF Serving's version layout
    assert host_base is not None and (host_base / "1" / "saved_model.pb").is_file(), base
    model = next(f.split("=", 1)[1] for f in flags if f.startswith("--model_name="))

    ports = {docker.ports[8500]: ds.free_port(), docker.ports[8501]: ds.free_port()}
    seen = [f"--model_base_path={host_base}" if f.startswith("--model_base_path=") else f for f in flags]
    seen = [re.sub(r"^--(port|rest_api_port)=(\d+)$", lambda m: f"--{m[1]}={ports[docker.ports[int(m[2])]]}", f)
            for f in seen]
    server = ds.start_server(seen, root, env)
    try:
        ds.wait_available(server, ports[docker.ports[8501]], [model])
        done = ds.run(ds.with_ports(curl_line, ports), root, env)
    finally:
        code, log = ds.stop(server)
    assert code == 0, log[-2000:]
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    query = json.loads(re.search(r"-d '([^']+)'", curl_line).group(1))["instances"][0]["query_text"]
    assert answer["predictions"][0]["item_ids"] == direct(query)


def test_docker_models_config_block(workdir):
    """BUILD.md's layout line run as written, then the second `docker run`: every model of the config it
    mounts exists under the mount and is served by the container's command line, batching file included."""
    root, env = workdir
    layout_line, docker_line = ds.commands(ds.snippet("BUILD.md", "docker-models-config"))
    done = ds.run(layout_line, root, env)
    assert done.returncode == 0, done.stderr[-2000:]
    docker = ds.DockerRun.parse(docker_line, root)
    assert docker.image == ds.IMAGE
    flags = docker.server_flags()

    def flag(name):
        return next(f.split("=", 1)[1] for f in flags if f.startswith(f"--{name}="))

    config_text = docker.host_path(flag("model_config_file")).read_text()
    assert docker.host_path(flag("batching_parameters_file")).is_file()
    container_bases = re.findall(r'base_path: "([^"]+)"', config_text)
    names = re.findall(r'name: "([^"]+)"', config_text)
    assert names == ["movielens", "movielens_scann"]
    # The container sees the config's absolute paths through the mount; the host copy says the same, seen here.
    seen_config = root / "container_view.config"
    for base in container_bases:
        assert base.startswith("/models/") and (docker.host_path(base) / "1" / "saved_model.pb").is_file(), base
        config_text = config_text.replace(f'"{base}"', f'"{docker.host_path(base)}"')
    seen_config.write_text(config_text)

    ports = {8500: ds.free_port(), 8501: ds.free_port()}
    seen = []
    for f in flags:
        name, _, value = f.partition("=")
        if name == "--model_config_file":
            value = str(seen_config)
        elif name in ("--model_base_path", "--batching_parameters_file"):
            value = str(docker.host_path(value))
        elif name in ("--port", "--rest_api_port"):
            value = str(ports[int(value)])
        seen.append(f"{name}={value}" if value else name)
    server = ds.start_server(seen, root, env)
    try:
        ds.wait_available(server, ports[8501], names)
        from serving.client import RestClient

        answers = [RestClient("127.0.0.1", ports[8501], n).retrieve(["space opera"], k=3) for n in names]
    finally:
        code, log = ds.stop(server)
    assert code == 0, log[-2000:]
    ids = [[i for i, _ in a[0]] for a in answers]
    assert ids[0] == ids[1] and len(ids[0]) == 3  # the same tiny model behind both indexes
    assert "--model_base_path=" in log and "ignored" in log  # the entrypoint's default model, as TF Serving


def test_readme_use_the_export_block(tmp_path, tiny_encoder):
    """README "Use the export": the block in a fresh interpreter on a tiny history-only SavedModel saved at the
    path it names; its outputs then printed."""
    from tests.tfrec.export.test_savedmodel_history import ITEMS, module

    mod, _ = module(tiny_encoder, with_text=False)
    code = ds.snippet("README.md", "use-export")
    path = re.search(r'load_export\("([^"]+)"\)', code).group(1)
    tf.saved_model.save(mod, str(tmp_path / path), signatures=mod.signatures())
    probe = "\nprint(out['item_ids'].numpy().astype(str).tolist(), out['scores'].numpy().dtype)\n"
    env = ds.scratch(tmp_path)
    done = subprocess.run([sys.executable, "-c", code + probe], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ids, dtype = done.stdout.strip().splitlines()[-1].rsplit(" ", 1)
    ids = ast.literal_eval(ids)
    assert dtype == "float32" and len(ids) == 1 and ids[0] and set(ids[0]) <= set(ITEMS)


def test_readme_own_data_yaml_is_a_valid_config(tmp_path):
    """README "Train on your own data": every key of the example YAML exists and passes validation, paths
    resolved against the YAML's folder (sample_weight_column included)."""
    from tfrec import config

    (tmp_path / "mydata.yaml").write_text(ds.snippet("README.md", "own-data-yaml"))
    cfg = config.build(config_file=str(tmp_path / "mydata.yaml"))  # the default preset, as the README says
    ic = cfg.data.interactions
    assert ic.path == str(tmp_path / "data" / "clicks-*.csv") and ic.sample_weight_column == "weight"
    assert (ic.label_column, ic.positive_threshold) == ("rating", 4)
