"""serving.models: version swaps, failed loads and their retries, the model config poll."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import tensorflow as tf
from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

from serving import client as client_lib
from tfrec.export import layout
from tests.helpers.servers import http, running_server
from tests.helpers.tiny_model import write_tiny_model


def test_swaps_to_a_new_version_under_load_without_failing_requests(tmp_path, caplog):
    base = tmp_path / "swap"
    layout.publish_version(base, lambda d: write_tiny_model(d, seed=1))
    v2_dir = tmp_path / "v2"
    write_tiny_model(v2_dir, seed=2)
    want_v2 = tf.saved_model.load(str(v2_dir)).signatures["serving_default"](
        query_text=tf.constant(["q"]), exclude_item_ids=tf.zeros([1, 0], tf.string))
    want_v2 = [i.decode() for i in want_v2["item_ids"].numpy()[0]]

    with running_server({"swap": str(base)}, poll_wait_s=0.1) as server:
        rest = client_lib.RestClient("127.0.0.1", server.rest_port, "swap")
        grpc_client = client_lib.GrpcClient("127.0.0.1", server.grpc_port, "swap")
        stop, failures, answers = threading.Event(), [], []

        def keep_querying(c):
            while not stop.is_set():
                try:
                    answers.append([i for i, _ in c.retrieve(["q"])[0]])
                except Exception as e:  # noqa: BLE001
                    failures.append(repr(e))

        threads = [threading.Thread(target=keep_querying, args=(c,))
                   for c in (rest, rest, grpc_client)]
        for t in threads:
            t.start()
        time.sleep(0.3)
        with caplog.at_level("INFO", logger="serving.server"):
            layout.publish_version(base, lambda d: write_tiny_model(d, seed=2))
            deadline = time.time() + 30
            while http(server.rest_port, "/v1/models/swap")[1]["model_version_status"][0][
                    "version"] != "2" and time.time() < deadline:
                time.sleep(0.05)
            time.sleep(0.3)
            # A broken version 3: the server logs it and keeps serving version 2.
            layout.publish_version(base, lambda d: Path(d, "saved_model.pb").write_bytes(b"junk"))
            time.sleep(0.6)
        stop.set()
        for t in threads:
            t.join(10)
        assert not failures, failures[:3]
        assert len(answers) > 20 and answers[-1] == want_v2 and answers[0] != want_v2
        assert http(server.rest_port, "/v1/models/swap")[1]["model_version_status"][0][
            "version"] == "2"
        assert [i for i, _ in rest.retrieve(["q"])[0]] == want_v2
        logs = [r.getMessage() for r in caplog.records if r.name == "serving.server"]
        assert any("version 2 loaded" in m and "swapped from version 1" in m for m in logs)
        assert any("version 3 failed to load" in m and "still serving version 2" in m
                   for m in logs)
        grpc_client.close()


def test_model_config_file_is_polled_for_added_and_removed_models(tiny_export, tmp_path):
    """--model_config_file_poll_wait_seconds: models added to models.config are served, removed ones are not."""
    for name in ("first", "second"):
        (tmp_path / name).symlink_to(tiny_export / "tiny", target_is_directory=True)
    config = layout.write_models_config(tmp_path, ["first"])

    def status(server, name):
        return http(server.rest_port, f"/v1/models/{name}")[0]

    with running_server(layout.read_models_config(config), grpc_port=None, poll_wait_s=0.05,
                        config_file=str(config), config_poll_s=0.1) as server:
        assert status(server, "first") == 200 and status(server, "second") == 404
        layout.write_models_config(tmp_path, ["first", "second"])
        assert wait_for(lambda: status(server, "second") == 200)
        layout.write_models_config(tmp_path, ["second"])
        assert wait_for(lambda: status(server, "first") == 404)
        assert status(server, "second") == 200
        config.write_text("not a config {")  # unreadable: logged, and what is served stays
        time.sleep(0.5)
        assert status(server, "second") == 200 and status(server, "first") == 404


def wait_for(check, timeout=30.0):
    """Polls ``check()`` until it is true (returns True) or ``timeout`` seconds pass (False)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(0.05)
    return False


def versions(server, name):
    """[(version, state, error_message)] of the REST model status."""
    status, body = http(server.rest_port, f"/v1/models/{name}")
    assert status == 200, body
    return [(int(v["version"]), v["state"], v["status"]["error_message"]) for v in body["model_version_status"]]


def test_a_version_copied_in_slowly_is_retried_and_served_once_complete(tmp_path, caplog):
    """Not published atomically: the poll sees version 2 while its files still arrive, over several polls."""
    base, src = tmp_path / "slow", tmp_path / "src"
    layout.publish_version(base, lambda d: write_tiny_model(d, seed=1))
    write_tiny_model(src, seed=2)
    dest, pb = base / "2", (src / "saved_model.pb").read_bytes()
    # A retry interval far longer than the test: only the arriving files trigger retries.
    with running_server({"slow": str(base)}, grpc_port=None, poll_wait_s=0.1, load_retry_interval_s=600) as server:
        with caplog.at_level("INFO", logger="serving.server"):
            for f in src.rglob("*"):  # everything but saved_model.pb
                if f.is_file() and f.name != "saved_model.pb":
                    (dest / f.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
                    (dest / f.relative_to(src)).write_bytes(f.read_bytes())
            assert wait_for(lambda: len(versions(server, "slow")) == 2)
            (served, state, _), (failed, failed_state, error) = versions(server, "slow")
            assert (served, state, failed, failed_state) == (1, "AVAILABLE", 2, "LOADING") and error
            (dest / "saved_model.pb").write_bytes(pb[: len(pb) // 2])  # half of it, then the rest
            assert wait_for(lambda: "attempt 2" in " ".join(r.getMessage() for r in caplog.records))
            assert http(server.rest_port, "/v1/models/slow:predict", {"instances": ["q"]})[0] == 200
            (dest / "saved_model.pb").write_bytes(pb)
            assert wait_for(lambda: versions(server, "slow") == [(2, "AVAILABLE", "")])
    failures = [r.getMessage() for r in caplog.records if "failed to load" in r.getMessage()]
    assert len(failures) >= 2 and all("still serving version 1" in m for m in failures)


def test_a_version_that_stays_broken_shows_failed_while_the_previous_one_serves(tmp_path, caplog):
    base = tmp_path / "broken"
    layout.publish_version(base, lambda d: write_tiny_model(d, seed=1))
    with running_server({"broken": str(base)}, poll_wait_s=0.05, max_load_retries=2,
                        load_retry_interval_s=0.1) as server:
        with caplog.at_level("INFO", logger="serving.server"):
            layout.publish_version(base, lambda d: Path(d, "saved_model.pb").write_bytes(b"junk"))
            # 1 attempt + 2 retries, 0.1 s then 0.2 s apart; then no more until the files change.
            assert wait_for(lambda: [s for _, s, _ in versions(server, "broken")] == ["AVAILABLE", "END"])
            time.sleep(1.0)
        attempts = [r.getMessage() for r in caplog.records if "version 2 failed to load" in r.getMessage()]
        assert len(attempts) == 3 and "attempt 3" in attempts[-1] and "no retries left" in attempts[-1]
        (_, _, _), (version, state, error) = versions(server, "broken")
        assert (version, state) == (2, "END") and "attempt 3 failed" in error
        assert http(server.rest_port, "/v1/models/broken:predict", {"instances": ["q"]})[0] == 200
        assert http(server.rest_port, "/v1/models/broken/versions/2")[1]["model_version_status"][0]["state"] == "END"
        assert http(server.rest_port, "/v1/models/broken/versions/7")[0] == 404
        channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = "broken"
        rows = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=10)
        channel.close()
        assert [(r.version, r.state) for r in rows.model_version_status] == [
            (1, get_model_status_pb2.ModelVersionStatus.AVAILABLE), (2, get_model_status_pb2.ModelVersionStatus.END)]
        assert "attempt 3 failed" in rows.model_version_status[1].status.error_message
