"""serving.client: models and signatures from the server's metadata (REST and gRPC), and errors that name
the models and signatures that exist. The reference is the SavedModel itself, loaded in-process."""

from __future__ import annotations

import pytest
import tensorflow as tf

from serving import client as client_lib
from tests.helpers.servers import running_server

CONFIG = """model_config_list {
  config { name: "tiny" base_path: "tiny" model_platform: "tensorflow" }
  config { name: "twin" base_path: "tiny" model_platform: "tensorflow" }
  config { name: "gone" base_path: "gone" model_platform: "tensorflow" }
}
"""
SERVED = ["tiny", "twin"]  # "gone" is in the config but not served


@pytest.fixture(scope="module")
def server(tiny_export):
    with running_server({name: str(tiny_export / "tiny") for name in SERVED}) as s:
        yield s


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("client") / "models.config"
    path.write_text(CONFIG)
    return path


@pytest.fixture(params=["rest", "grpc"])
def make_client(request, server):
    def make(model_name="tiny", known_models=("tiny", "twin", "gone")):
        if request.param == "rest":
            return client_lib.RestClient("127.0.0.1", server.rest_port, model_name, known_models=list(known_models))
        return client_lib.GrpcClient("127.0.0.1", server.grpc_port, model_name, known_models=list(known_models))
    return make


@pytest.fixture(scope="module")
def saved_signatures(tiny_export):
    """{signature: {"inputs": {name: (dtype, shape)}, "outputs": ...}} read from the SavedModel, not the server."""
    loaded = tf.saved_model.load(str(tiny_export / "tiny" / "1"))

    def describe(spec):
        return spec.dtype.name, spec.shape.as_list()

    return {name: {"inputs": {s.name: describe(s) for s in fn.structured_input_signature[1].values()},
                   "outputs": {k: describe(s) for k, s in fn.structured_outputs.items()}}
            for name, fn in loaded.signatures.items()}


def test_signatures_match_the_saved_model(make_client, saved_signatures):
    signatures = make_client().signatures()
    assert signatures == saved_signatures
    assert signatures["serving_default"]["inputs"] == {"query_text": ("string", [None]),
                                                       "exclude_item_ids": ("string", [None, None])}


def test_models_lists_the_served_ones_with_their_versions(make_client):
    client = make_client()
    assert client.models() == {"tiny": 1, "twin": 1}
    assert client.models(["gone", "twin"]) == {"twin": 1}


def test_missing_signature_names_those_that_exist(make_client, saved_signatures):
    client = make_client()
    with pytest.raises(client_lib.ServingError) as err:
        client.predict({"query_text": ["space opera"]}, signature_name="embed_querry")
    assert err.value.message == ("model 'tiny' has no signature 'embed_querry'; it has: "
                                 + ", ".join(sorted(saved_signatures)))
    assert err.value.code in (400, "INVALID_ARGUMENT")  # the server's own status is kept


def test_retrieve_on_a_signature_without_items_says_which_retrieve(make_client):
    with pytest.raises(client_lib.ServingError,
                       match=r"^INVALID_ARGUMENT: signature 'embed_query' returns embedding, not item_ids and "
                             r"scores; retrieval signatures: retrieve, serving_default$"):
        make_client().retrieve(["space opera"], signature_name="embed_query")


def test_missing_model_names_the_served_models(make_client):
    with pytest.raises(client_lib.ServingError) as err:
        make_client("tfrec").retrieve(["space opera"])
    assert err.value.code in (404, "NOT_FOUND")
    assert err.value.message == ("model 'tfrec' is not served (Servable not found for request: Latest(tfrec)); "
                                 "it serves: tiny, twin")
    with pytest.raises(client_lib.ServingError, match=r"is not served .*; name the models it may serve"):
        make_client("tfrec", known_models=()).signatures()


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_cli_lists_models_and_signatures(server, config_file, saved_signatures, capsys, protocol):
    port = ["--port", str(server.rest_port)] if protocol == "rest" else ["--grpc", "--port", str(server.grpc_port)]
    assert client_lib.main(["--list", "--model_config_file", str(config_file), *port]) == 0
    lines = capsys.readouterr().out.splitlines()
    heads = [ln for ln in lines if not ln.startswith("  ")]
    assert heads == ["tiny: version 1", "twin: version 1",
                     "gone: not served (Servable not found for request: Latest(gone))"]
    tiny = lines[1:lines.index("twin: version 1")]
    assert [ln.split(":")[0].strip() for ln in tiny] == sorted(saved_signatures)
    assert "  serving_default: exclude_item_ids string [?, ?], query_text string [?] -> item_ids string [?, ?], " \
           "scores float32 [?, ?]" in tiny


def test_cli_errors_are_one_line(server, config_file, capsys):
    rest = ["--port", str(server.rest_port)]
    # the first model of the config is the default
    assert client_lib.main(["--query", "space opera", "--k", "2", "--model_config_file", str(config_file), *rest]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "query: space opera" and len(out) == 3
    assert client_lib.main(["--query", "space opera", "--model_name", "tfrec", "--model_config_file",
                            str(config_file), *rest]) == 1
    err = capsys.readouterr().err.strip()
    assert err == ("serving.client: 404: model 'tfrec' is not served (Servable not found for request: "
                   "Latest(tfrec)); it serves: tiny, twin")
    assert client_lib.main(["--query", "space opera", *rest]) == 2
    assert "name the model with --model_name" in capsys.readouterr().err
    assert client_lib.main(["--list", "--model_config_file", str(config_file) + ".missing", *rest]) == 2
    assert capsys.readouterr().err.strip().endswith("models.config.missing: file not found (--model_config_file)")
