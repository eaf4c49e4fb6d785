"""The serving snippets of README.md and BUILD.md, run as written (blocks found by ``<!-- snippet: NAME``
markers, so a changed block is what runs here, not a copy).

Each runs in a scratch folder holding ``runs/<preset>/export`` for each preset a snippet names: the export
that preset's run leaves (``--index all`` for ``movielens``), from its model at tiny sizes, untrained
(``tests/helpers/preset_export.py``). So a snippet meets the very inputs that export takes: the MovieLens
presets' ``history_item_ids``, the smoke preset's ``query_text``. ``.venv/bin/python`` points at this
interpreter; the documented ports are swapped for free ones. There is no docker here, so a ``docker run``
line is checked for what can be checked: the folders it mounts hold what the container expects, and the
command line the ``tensorflow/serving`` image would run (its entrypoint's flags and the line's own, paths seen
through the mounts) starts ``serving.server``, which then answers the requests documented beside it. The
README's Python API block is run by tests/test_readme_api.py.
"""

from __future__ import annotations

import ast
import json
import re
import shlex
import subprocess
import sys

import pytest
import tensorflow as tf

import tfrec
from tests.helpers import doc_snippets as ds
from tfrec.export import layout

# What each preset's export is asked in the snippets that name it.
PRESET_EXPORTS = {"movielens": "all", "smoke": "brute_force"}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A scratch folder with runs/movielens/export (movielens, movielens_ivf, movielens_scann) and
    runs/smoke/export (smoke), models.config and batching_parameters.txt, as those presets' runs leave them."""
    from tests.helpers.preset_export import write_preset_export

    root = tmp_path_factory.mktemp("docs")
    for preset, index in PRESET_EXPORTS.items():
        write_preset_export(preset, root / "runs" / preset, index=index)
    return root, ds.scratch(root)


@pytest.fixture(scope="module")
def direct(workdir):
    """``retrieve(model_dir, **inputs)``: the served ids of one request, from the SavedModel called in-process."""
    root, _ = workdir
    loaded = {}

    def retrieve(model_dir, **inputs) -> list[str]:
        """``model_dir``: a model's base folder (version 1); ``inputs``: one request's, a batch of one."""
        if model_dir not in loaded:
            loaded[model_dir] = tfrec.load_export(root / model_dir / "1").signatures["serving_default"]
        feed = {"exclude_item_ids": [[""]], **inputs}
        out = loaded[model_dir](**{n: tf.constant(v) for n, v in feed.items()})
        return [i.decode() for i in out["item_ids"].numpy()[0]]
    return retrieve


def _flag_values(line: str, flag: str) -> list[str]:
    """The values after ``flag`` on a command line, up to the next option."""
    tokens = shlex.split(line)
    if flag not in tokens:
        return []
    values = []
    for token in tokens[tokens.index(flag) + 1:]:
        if token.startswith("--"):
            break
        values.append(token)
    return values


def test_local_server_and_client_block(workdir, direct):
    """BUILD.md "The local server and client": the server line, then each client line against it."""
    root, env = workdir
    server_line, *client_lines = ds.commands(ds.snippet("BUILD.md", "local-server-client"))
    assert " -m serving.server " in server_line and all(" -m serving.client " in c for c in client_lines)
    export = root / "runs" / "movielens" / "export"
    names = list(layout.read_models_config(export / "models.config"))
    assert names == ["movielens", "movielens_ivf", "movielens_scann"]
    ports = {8500: ds.free_port(), 8501: ds.free_port()}
    server = ds.start_documented_server(ds.with_ports(server_line, ports), root, env)
    try:
        ds.wait_available(server, ports[8501], names)
        outputs = []
        for line in client_lines:
            done = ds.run(ds.with_ports(line, ports), root, env)
            assert done.returncode == 0, f"{line}\n{done.stderr[-2000:]}"
            outputs.append((line, done.stdout.splitlines()))
    finally:
        code, log = ds.stop(server)
    assert code == 0, log[-2000:]
    # The export leaves a request's history out of its results, and the server says so when it loads it.
    assert "history_item_ids out of its results (export.exclude_history)" in log

    texts = dict(ln.split("\t") for ln in (export / "movielens/1/assets.extra/items.tsv")
                 .read_text().splitlines()[1:])
    for line, out in outputs:
        if "--list" in line:
            assert [ln for ln in out if not ln.startswith(" ")] == [f"{n}: version 1" for n in names]
            assert any(ln.startswith("  serving_default: ") and "history_item_ids" in ln for ln in out)
            continue
        history, exclude = _flag_values(line, "--history"), _flag_values(line, "--exclude")
        model, k = _flag_values(line, "--model_name")[0], _flag_values(line, "--k")
        assert history, f"a movielens export takes history_item_ids: {line}"
        note = " (left out of the results: export.exclude_history)" if "--job-dir" in line else ""
        assert out[0] == f"history: {' '.join(history)}{note}"
        rows = [ln.split() for ln in out[1:]]
        want = direct(f"runs/movielens/export/{model}", history_item_ids=[history], exclude_item_ids=[exclude or [""]])
        assert [r[1] for r in rows] == (want[:int(k[0])] if k else want)
        assert not {r[1] for r in rows} & set(history + exclude)
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
    assert "inputs['history_item_ids']" in done.stdout and "inputs['query_text']" not in done.stdout


@pytest.mark.parametrize("name", ["docker-one-model", "docker-text-query"])
def test_docker_one_model_block(workdir, direct, name):
    """BUILD.md's one-model `docker run`s (a MovieLens and a text-query export): the mounted model folder, the
    container's flags, then the curl request."""
    root, env = workdir
    docker_line, curl_line = ds.commands(ds.snippet("BUILD.md", name))
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
    assert "predictions" in answer, answer
    (instance,) = json.loads(re.search(r"-d '([^']+)'", curl_line).group(1))["instances"]
    served = answer["predictions"][0]["item_ids"]
    assert served == direct(host_base.relative_to(root), **{n: [v] for n, v in instance.items()})
    assert not set(served) & set(instance.get("history_item_ids", []))


def test_docker_models_config_block(workdir, direct):
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
    assert names == ["movielens", "movielens_ivf", "movielens_scann"]
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

        history = [["50", "181", "172"]]
        answers = [RestClient("127.0.0.1", ports[8501], n).retrieve(history=history, k=3) for n in names]
    finally:
        code, log = ds.stop(server)
    assert code == 0, log[-2000:]
    for name, answer in zip(names, answers):
        assert [i for i, _ in answer[0]] == direct(f"runs/movielens/export/{name}", history_item_ids=history)[:3]
    assert "--model_base_path=" in log and "ignored" in log  # the entrypoint's default model, as TF Serving


def test_readme_use_the_export_block(workdir, direct):
    """README "Use the export": the block in a fresh interpreter, on the export of the preset it names, at the
    path it names; its outputs then printed."""
    root, env = workdir
    code = ds.snippet("README.md", "use-export")
    path = re.search(r'load_export\("([^"]+)"\)', code).group(1)
    assert (root / path / "saved_model.pb").is_file(), path
    probe = "\nprint(out['item_ids'].numpy().astype(str).tolist(), out['scores'].numpy().dtype)\n"
    done = subprocess.run([sys.executable, "-c", code + probe], cwd=root, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ids, dtype = done.stdout.strip().splitlines()[-1].rsplit(" ", 1)
    ids = ast.literal_eval(ids)
    inputs = {n: ast.literal_eval(v) for n, v in re.findall(r"(\w+)=tf\.constant\((\[\[.*?\]\])\)", code)}
    assert set(inputs) == {"history_item_ids", "exclude_item_ids"}
    assert dtype == "float32" and ids == [direct(path.rsplit("/", 1)[0], **inputs)]
    assert not set(ids[0]) & set(inputs["history_item_ids"][0] + inputs["exclude_item_ids"][0])


def test_readme_own_data_yaml_is_a_valid_config(tmp_path):
    """README "Train on your own data": every key of the example YAML exists and passes validation, paths
    resolved against the YAML's folder (sample_weight_column included)."""
    from tfrec import config

    (tmp_path / "mydata.yaml").write_text(ds.snippet("README.md", "own-data-yaml"))
    cfg = config.build(config_file=str(tmp_path / "mydata.yaml"))  # the default preset, as the README says
    ic = cfg.data.interactions
    assert ic.path == str(tmp_path / "data" / "clicks-*.csv") and ic.sample_weight_column == "weight"
    assert (ic.label_column, ic.positive_threshold) == ("rating", 4)
