"""Clients for a tfrec model server (``serving.server`` or TF Serving) and a CLI.

Library::

    from serving.client import RestClient, GrpcClient
    client = RestClient("127.0.0.1", 8501, "tfrec")
    client.retrieve(["space opera"], k=10, exclude=[["item_42"]])
    # -> [[("item_7", 0.83), ...]]   one list of (item_id, score) per query
    client.predict({"query_text": ["space opera"]}, signature_name="embed_query")
    # -> {"embedding": array([[...]], dtype=float32)}

    client.signatures()   # {"serving_default": {"inputs": {"query_text": ("string", [None])}, ...}, ...}
    client.models(["tfrec", "tfrec_scann"])   # {"tfrec": 1}: those the server serves, with their versions

Asked for a model or signature the server does not have, a call raises a ServingError naming
those that exist (``serving.client_metadata``: TF Serving cannot list its models, so the names
come from ``known_models``, e.g. the server's ``models.config``).

Command line (prints rank, item id, score and the item's text when known)::

    python -m serving.client --query "space opera" --k 10 --exclude item_42 --model_name tfrec
    python -m serving.client --list --model_config_file EXPORT/models.config
    python -m serving.client --grpc --port 8500 --query "space opera" --job-dir runs/x
    python -m serving.client --query "space opera" --items items.tsv
    python -m serving.client --history 50 181 --signature_name retrieve_and_rank

Item texts come from ``--items`` (TSV ``item_id<TAB>text``), else from the newest
version's ``assets.extra/items.tsv`` under ``--model_base_path`` or
``--job-dir``/export/<model_name>; without them only ids and scores are printed.

A run evaluated with seen items left out (``eval.exclude_seen``) exports a ``retrieve`` that leaves
the request's own ``history_item_ids`` out of its results (``export.exclude_history``); ``exclude``
adds to them. With ``--job-dir`` or ``--model_base_path`` the printout says which the export does,
read from its ``assets.extra/export_report.json``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import json_format

import serving  # noqa: F401  (tfrec's environment before any tensorflow import)
from serving import client_metadata, item_texts
from tfrec.export import layout

DEFAULT_SIGNATURE = "serving_default"


class ServingError(Exception):
    """An error answer: ``code`` is the HTTP status (REST) or gRPC status name."""

    def __init__(self, code: int | str, message: str):
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


def _padded(rows: list[list[Any]], pad: Any, name: str, n: int) -> list[list[Any]] | None:
    """Per-query lists padded to one width; None when all are empty (the same as none; no dtype on gRPC)."""
    if len(rows) != n:
        raise ValueError(f"{name} has {len(rows)} lists for {n} queries")
    width = max((len(r) for r in rows), default=0)
    return [list(r) + [pad] * (width - len(r)) for r in rows] if width else None


def _retrieve_inputs(queries: list[str] | None, exclude: list[list[str]] | None,
                     history: list[list[str]] | None = None,
                     history_labels: list[list[float]] | None = None) -> dict[str, Any]:
    """``query_text`` and/or ``history_item_ids`` (+ ``history_labels``), and ``exclude_item_ids``."""
    if queries is None and history is None:
        raise ValueError("give queries (query texts) and/or history (item ids per query)")
    n = len(queries) if queries is not None else len(history)
    inputs: dict[str, Any] = {} if queries is None else {"query_text": list(queries)}
    # A padding item is "", so its label (0) is never read.
    for name, rows, pad in (("history_item_ids", history, ""), ("history_labels", history_labels, 0.0),
                            ("exclude_item_ids", exclude, "")):
        if rows is not None and (padded := _padded(rows, pad, name, n)) is not None:
            inputs[name] = np.asarray(padded, np.float32) if name == "history_labels" else padded
    return inputs


def _top_k(outputs: dict[str, Any], k: int | None) -> list[list[tuple[str, float]]]:
    """``outputs`` of a retrieval signature (``item_ids``, ``scores`` [batch, k]; ``retrieve_and_rank``:
    ``ranking_scores``) as (id, score) lists."""
    scores = outputs["ranking_scores"] if "ranking_scores" in outputs else outputs["scores"]
    results = []
    for ids, scores in zip(outputs["item_ids"], scores):
        pairs = [(i.decode() if isinstance(i, bytes) else str(i), float(s))
                 for i, s in zip(ids, scores) if i not in ("", b"")]
        results.append(pairs[:k] if k is not None else pairs)
    return results


class _Client:
    """What the REST and gRPC clients share: retrieval, and the models and signatures the server has.

    ``model_name`` and ``known_models`` (the model names the server may serve, e.g. its
    ``models.config``'s; TF Serving has no call that lists them) are set by the subclasses.
    """

    model_name: str
    known_models: list[str]

    def predict(self, inputs: dict[str, Any], signature_name: str = DEFAULT_SIGNATURE
                ) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _signature_def(self, model_name: str) -> tuple[int, dict[str, Any]]:
        """(served version, ``SignatureDefMap.signature_def`` as a dict) from the model's metadata."""
        raise NotImplementedError

    def signatures(self, model_name: str | None = None) -> client_metadata.Signatures:
        """Every signature of the served model (default: this client's): inputs and outputs with dtypes and
        shapes (``serving.client_metadata.Signatures``). ServingError naming the served models if it is missing."""
        name = model_name or self.model_name
        try:
            return client_metadata.describe_signatures(self._signature_def(name)[1])
        except ServingError as e:
            raise self._missing_model(e, name) if client_metadata.is_not_found(e.code) else e from None

    def models(self, names: list[str] | None = None) -> dict[str, int]:
        """``{model name: served version}`` for those of ``names`` (default: ``known_models``, else this
        client's model) that the server serves, in the order given."""
        served = {}
        for name in names or self.known_models or [self.model_name]:
            try:
                served[name] = self._signature_def(name)[0]
            except ServingError as e:
                if not client_metadata.is_not_found(e.code):
                    raise
        return served

    def _missing_model(self, error: ServingError, name: str) -> ServingError:
        others = [m for m in self.models() if m != name] if self.known_models else []
        listed = (f"; it serves: {', '.join(others)}" if others else "; it serves none of "
                  f"{', '.join(self.known_models)}") if self.known_models else (
            "; name the models it may serve with known_models (--model_config_file) to list them")
        return ServingError(error.code, f"model '{name}' is not served ({error.message}){listed}")

    def _explain(self, error: ServingError, signature_name: str) -> ServingError:
        """A failed predict's error, restated when the model or the signature does not exist."""
        try:
            signatures = self.signatures()
        except ServingError as e:
            return e if client_metadata.is_not_found(e.code) else error
        except OSError:
            return error
        if signature_name not in signatures:
            return ServingError(error.code, f"model '{self.model_name}' has no signature '{signature_name}'; "
                                            f"it has: {', '.join(sorted(signatures))}")
        return error

    def retrieve(self, queries: list[str] | None = None, k: int | None = None,
                 exclude: list[list[str]] | None = None,
                 signature_name: str = DEFAULT_SIGNATURE, history: list[list[str]] | None = None,
                 history_labels: list[list[float]] | None = None) -> list[list[tuple[str, float]]]:
        """Top items per query: ``[[(item_id, score), ...], ...]``, best first.

        Args:
          queries: query texts (None: a model that reads the history only).
          k: keep at most this many of the server's results per query.
          exclude: per query, item ids that must not be returned (``None``: none); an export with
            ``export.exclude_history`` on also leaves out the ``history`` sent.
          signature_name: a signature with ``item_ids`` and ``scores`` (or, ``retrieve_and_rank``,
            ``ranking_scores``) outputs.
          history: per query, the user's recent item ids, most recent first (lists may differ in length);
            ``history_labels``: their labels, for a ``retrieve_and_rank`` head that reads them.
        """
        outputs = self.predict(_retrieve_inputs(queries, exclude, history, history_labels), signature_name)
        if "item_ids" not in outputs or not {"scores", "ranking_scores"} & set(outputs):
            retrieval = [n for n, s in self.signatures().items() if {"item_ids", "scores"} <= set(s["outputs"])]
            raise ServingError("INVALID_ARGUMENT", f"signature '{signature_name}' returns {', '.join(sorted(outputs))}"
                               f", not item_ids and scores; retrieval signatures: {', '.join(sorted(retrieval))}")
        return _top_k(outputs, k)


class RestClient(_Client):
    """TF Serving REST client (columnar ``inputs`` form) over keep-alive HTTP/1.1.

    Args:
      host, port: the REST API address.
      model_name: the served model.
      version: a specific version, or None for the newest.
      timeout: seconds per request.
      known_models: the model names the server may serve (its models.config's), for :meth:`models`
        and for naming the served ones when ``model_name`` is not.
    """

    def __init__(self, host: str, port: int, model_name: str, version: int | None = None,
                 timeout: float = 30.0, known_models: list[str] | None = None):
        self.host, self.port, self.model_name, self.timeout = host, port, model_name, timeout
        self.version, self.known_models = version, list(known_models or [])
        self._prefix = self._model_path(model_name)
        self._local = threading.local()  # one connection per thread
        self._output_names: dict[str, list[str]] = {}

    def _request(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        for attempt in (0, 1):  # a kept-alive connection may have been closed by the server
            conn = getattr(self._local, "conn", None)
            if conn is None:
                conn = self._local.conn = http.client.HTTPConnection(
                    self.host, self.port, timeout=self.timeout)
            try:
                conn.request(method, path, body=data,
                             headers={"Content-Type": "application/json"} if data else {})
                response = conn.getresponse()
                payload = response.read()
                break
            except (http.client.HTTPException, ConnectionError):
                conn.close()
                self._local.conn = None
                if attempt:
                    raise
        if response.getheader("Connection", "").lower() == "close":
            conn.close()
            self._local.conn = None
        try:
            answer = json.loads(payload)
        except ValueError:
            raise ServingError(response.status, payload[:200].decode("utf-8", "replace")) from None
        if response.status != 200:
            raise ServingError(response.status, answer.get("error", str(answer)))
        return answer

    def _model_path(self, model_name: str) -> str:
        return f"/v1/models/{model_name}" + (f"/versions/{self.version}" if self.version else "")

    def metadata(self, model_name: str | None = None) -> dict[str, Any]:
        """The model's ``/metadata`` answer (``signature_def`` of every signature)."""
        return self._request("GET", f"{self._model_path(model_name or self.model_name)}/metadata")

    def _signature_def(self, model_name: str) -> tuple[int, dict[str, Any]]:
        answer = self.metadata(model_name)
        return int(answer["model_spec"]["version"]), answer["metadata"]["signature_def"]["signature_def"]

    def status(self) -> dict[str, Any]:
        """The model's status answer (``model_version_status``)."""
        return self._request("GET", self._prefix)

    def predict(self, inputs: dict[str, Any], signature_name: str = DEFAULT_SIGNATURE
                ) -> dict[str, np.ndarray]:
        """Runs a signature on named inputs (lists/arrays with a batch dimension)."""
        body = {"signature_name": signature_name,
                "inputs": {n: np.asarray(v).tolist() if isinstance(v, np.ndarray) else v
                           for n, v in inputs.items()}}
        try:
            outputs = self._request("POST", f"{self._prefix}:predict", body)["outputs"]
        except ServingError as e:
            raise self._explain(e, signature_name) from None
        if not isinstance(outputs, dict):  # a single output comes back without its name
            if signature_name not in self._output_names:
                self._output_names[signature_name] = list(self.signatures()[signature_name]["outputs"])
            outputs = {self._output_names[signature_name][0]: outputs}
        return {n: np.asarray(v) for n, v in outputs.items()}


class GrpcClient(_Client):
    """TF Serving gRPC client (``PredictionService.Predict``).

    Args: as ``RestClient``; ``port`` is the gRPC port.
    """

    def __init__(self, host: str, port: int, model_name: str, version: int | None = None,
                 timeout: float = 30.0, known_models: list[str] | None = None):
        # heavy: gRPC and the TF Serving protos (which load TensorFlow) for gRPC only; RestClient stays light
        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        self.model_name, self.version, self.timeout = model_name, version, timeout
        self.known_models = list(known_models or [])
        self.channel = grpc.insecure_channel(f"{host}:{port}")
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)

    def predict(self, inputs: dict[str, Any], signature_name: str = DEFAULT_SIGNATURE
                ) -> dict[str, np.ndarray]:
        """Runs a signature on named inputs; raises ServingError with the gRPC code name."""
        import grpc  # heavy: as in __init__
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        request = predict_pb2.PredictRequest()
        request.model_spec.name = self.model_name
        request.model_spec.signature_name = signature_name
        if self.version is not None:
            request.model_spec.version.value = self.version
        for name, value in inputs.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
        try:
            response = self.stub.Predict(request, timeout=self.timeout)
        except grpc.RpcError as e:
            raise self._explain(ServingError(e.code().name, e.details()), signature_name) from None
        return {n: tf.make_ndarray(t) for n, t in response.outputs.items()}

    def _signature_def(self, model_name: str) -> tuple[int, dict[str, Any]]:
        """``GetModelMetadata`` with ``metadata_field: "signature_def"``; its Any holds a SignatureDefMap."""
        import grpc  # heavy: as in __init__
        from tensorflow_serving.apis import get_model_metadata_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        request.model_spec.name = model_name
        if self.version is not None:
            request.model_spec.version.value = self.version
        try:
            response = self.stub.GetModelMetadata(request, timeout=self.timeout)
        except grpc.RpcError as e:
            raise ServingError(e.code().name, e.details()) from None
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)
        as_dict = json_format.MessageToDict(signature_map, preserving_proto_field_name=True)
        return response.model_spec.version.value, as_dict.get("signature_def", {})

    def close(self) -> None:
        self.channel.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m serving.client",
                                description="Query a tfrec model server and print the top items, or list "
                                            "its models and signatures.")
    p.add_argument("--query", action="append", help="query text (repeatable)")
    p.add_argument("--list", action="store_true",
                   help="print each model (--model_config_file's, or --model_name) with its signatures")
    p.add_argument("--history", nargs="*", default=None, metavar="ID",
                   help="the user's recent item ids, most recent first (one user; with or without --query)")
    p.add_argument("--k", type=int, default=None, help="print at most k items per query")
    p.add_argument("--exclude", nargs="*", default=None, metavar="ID",
                   help="item ids never to return (applied to every query)")
    p.add_argument("--grpc", action="store_true", help="use gRPC instead of REST")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=None, help="default 8501 (REST) / 8500 (gRPC)")
    p.add_argument("--model_name", default=None,
                   help="the served model (default: the first of --model_config_file)")
    p.add_argument("--model_config_file", default=None,
                   help="the server's models.config: the models it may serve (default: JOB_DIR/export/models.config)")
    p.add_argument("--signature_name", default=DEFAULT_SIGNATURE)
    p.add_argument("--items", help="TSV item_id<TAB>text for printing item texts")
    p.add_argument("--model_base_path", help="EXPORT/<model_name>, to find assets.extra/items.tsv")
    p.add_argument("--job-dir", "--job_dir", dest="job_dir", help="a training job dir (has export/)")
    args = p.parse_args(argv)
    if not args.query and not args.history and not args.list:
        p.error("give --query TEXT (repeatable) and/or --history ID..., or --list")
    if args.model_config_file and not Path(args.model_config_file).is_file():
        print(f"serving.client: {args.model_config_file}: file not found (--model_config_file)", file=sys.stderr)
        return 2
    config = args.model_config_file or (
        Path(args.job_dir) / "export" / layout.MODELS_CONFIG if args.job_dir else None)
    try:
        known = client_metadata.config_model_names(config) if config and Path(config).is_file() else []
    except ValueError as e:
        print(f"serving.client: {e}", file=sys.stderr)
        return 2
    model_name = args.model_name or (known[0] if known else None)
    if model_name is None:
        print("serving.client: name the model with --model_name, or give the server's models.config with "
              "--model_config_file (or --job-dir) to take its first model", file=sys.stderr)
        return 2
    port = args.port or (8500 if args.grpc else 8501)
    client = (GrpcClient if args.grpc else RestClient)(args.host, port, model_name, known_models=known)
    try:
        if args.list:
            lines, served = client_metadata.listing(client, ServingError)
            print("\n".join(lines))
            return 0 if served else 1
        n = len(args.query) if args.query else 1
        exclude = [list(args.exclude)] * n if args.exclude else None
        history = [list(args.history)] * n if args.history else None
        results = client.retrieve(args.query, k=args.k, exclude=exclude, signature_name=args.signature_name,
                                  history=history)
    except (ServingError, OSError) as e:
        print(f"serving.client: {e}", file=sys.stderr)
        return 1
    items_path = args.items or item_texts.find_items_file(args.model_base_path, args.job_dir, model_name)
    texts = item_texts.read_items(items_path) if items_path else {}
    note = item_texts.history_note(item_texts.read_export_report(args.model_base_path, args.job_dir, model_name))
    for query, pairs in zip(args.query or [None], results):
        if args.history:
            print(f"history: {' '.join(args.history)}" + (f" ({note})" if note else ""))
        if query is not None:
            print(f"query: {query}")
        for rank, (item_id, score) in enumerate(pairs, 1):
            text = f"  {texts[item_id]}" if item_id in texts else ""
            print(f"{rank:4d}  {item_id}  {score:.4f}{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
