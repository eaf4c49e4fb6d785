"""Shared fixtures for the serving tests: tiny SavedModels and running servers."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # `pytest tests/serving` from anywhere finds `serving`
    sys.path.insert(0, str(REPO))

import pytest  # noqa: E402

import serving  # noqa: E402,F401  (tfrec's environment before tensorflow)


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory) -> Path:
    """EXPORT/ with tiny/1 (seed 1), tiny_scann/1 (same model through ScaNN), models.config."""
    from tfrec.export import layout
    from tests.helpers.tiny_model import write_tiny_model

    root = tmp_path_factory.mktemp("export")
    layout.publish_version(root / "tiny", lambda d: write_tiny_model(d, seed=1))
    layout.publish_version(root / "tiny_scann", lambda d: write_tiny_model(d, seed=1, scann=True))
    layout.write_models_config(root, ["tiny", "tiny_scann"])
    layout.write_batching_parameters(root, max_batch_size=8)
    return root


@pytest.fixture(scope="module")
def stub(server):
    """A gRPC PredictionService stub on the test module's own ``server`` fixture."""
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    yield prediction_service_pb2_grpc.PredictionServiceStub(channel)
    channel.close()
