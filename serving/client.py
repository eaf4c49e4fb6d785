"""Clients for a tfrec model server (``serving.server`` or TF Serving) and a CLI.

Library::

    from serving.client import RestClient, GrpcClient
    client = RestClient("127.0.0.1", 8501, "tfrec")
    client.retrieve(["space opera"], k=10, exclude=[["item_42"]])
    # -> [[("item_7", 0.83), ...]]   one list of (item_id, score) per query
    client.predict({"query_text": ["space opera"]}, signature_name="embed_query")
    # -> {"embedding": array([[...]], dtype=float32)}

Command line (prints rank, item id, score and the item's text when known)::

    python -m serving.client --query "space opera" --k 10 --exclude item_42
    python -m serving.client --grpc --port 8500 --query "space opera" --job-dir runs/x
    python -m serving.client --query "space opera" --items items.tsv

Item texts come from ``--items`` (TSV ``item_id<TAB>text``), else from the newest
version's ``assets.extra/items.tsv`` under ``--model_base_path`` or
``--job-dir``/export/<model_name>; without them only ids and scores are printed.
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

import serving  # noqa: F401  (tfrec's environment before any tensorflow import)
from tfrec.export import layout

DEFAULT_SIGNATURE = "serving_default"


class ServingError(Exception):
    """An error answer: ``code`` is the HTTP status (REST) or gRPC status name."""

    def __init__(self, code: int | str, message: str):
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


def _retrieve_inputs(queries: list[str], exclude: list[list[str]] | None) -> dict[str, Any]:
    inputs: dict[str, Any] = {"query_text": list(queries)}
    if exclude is not None:
        if len(exclude) != len(queries):
            raise ValueError(f"exclude has {len(exclude)} lists for {len(queries)} queries")
        width = max((len(e) for e in exclude), default=0)
        if width:  # an all-empty exclusion is the same as none (and has no dtype on gRPC)
            inputs["exclude_item_ids"] = [list(e) + [""] * (width - len(e)) for e in exclude]
    return inputs


def _top_k(outputs: dict[str, Any], k: int | None) -> list[list[tuple[str, float]]]:
    results = []
    for ids, scores in zip(outputs["item_ids"], outputs["scores"]):
        pairs = [(i.decode() if isinstance(i, bytes) else str(i), float(s))
                 for i, s in zip(ids, scores) if i not in ("", b"")]
        results.append(pairs[:k] if k is not None else pairs)
    return results


class _Client:
    def predict(self, inputs: dict[str, Any], signature_name: str = DEFAULT_SIGNATURE
                ) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def retrieve(self, queries: list[str], k: int | None = None,
                 exclude: list[list[str]] | None = None,
                 signature_name: str = DEFAULT_SIGNATURE) -> list[list[tuple[str, float]]]:
        """Top items per query: ``[[(item_id, score), ...], ...]``, best first.

        Args:
          queries: query texts.
          k: keep at most this many of the server's results per query.
          exclude: per query, item ids that must not be returned (``None``: none).
          signature_name: a signature with ``item_ids`` and ``scores`` outputs.
        """
        outputs = self.predict(_retrieve_inputs(queries, exclude), signature_name)
        return _top_k(outputs, k)


class RestClient(_Client):
    """TF Serving REST client (columnar ``inputs`` form) over keep-alive HTTP/1.1.

    Args:
      host, port: the REST API address.
      model_name: the served model.
      version: a specific version, or None for the newest.
      timeout: seconds per request.
    """

    def __init__(self, host: str, port: int, model_name: str, version: int | None = None,
                 timeout: float = 30.0):
        self.host, self.port, self.model_name, self.timeout = host, port, model_name, timeout
        self._prefix = f"/v1/models/{model_name}" + (f"/versions/{version}" if version else "")
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

    def metadata(self) -> dict[str, Any]:
        """The model's ``/metadata`` answer (``signature_def`` of every signature)."""
        return self._request("GET", f"{self._prefix}/metadata")

    def status(self) -> dict[str, Any]:
        """The model's status answer (``model_version_status``)."""
        return self._request("GET", self._prefix)

    def predict(self, inputs: dict[str, Any], signature_name: str = DEFAULT_SIGNATURE
                ) -> dict[str, np.ndarray]:
        """Runs a signature on named inputs (lists/arrays with a batch dimension)."""
        body = {"signature_name": signature_name,
                "inputs": {n: np.asarray(v).tolist() if isinstance(v, np.ndarray) else v
                           for n, v in inputs.items()}}
        outputs = self._request("POST", f"{self._prefix}:predict", body)["outputs"]
        if not isinstance(outputs, dict):  # a single output comes back without its name
            if signature_name not in self._output_names:
                sigs = self.metadata()["metadata"]["signature_def"]["signature_def"]
                if signature_name not in sigs:
                    raise ServingError(404, f"model has no signature '{signature_name}'; it has: "
                                            f"{', '.join(sorted(sigs))}")
                self._output_names[signature_name] = list(sigs[signature_name]["outputs"])
            outputs = {self._output_names[signature_name][0]: outputs}
        return {n: np.asarray(v) for n, v in outputs.items()}


class GrpcClient(_Client):
    """TF Serving gRPC client (``PredictionService.Predict``).

    Args: as ``RestClient``; ``port`` is the gRPC port.
    """

    def __init__(self, host: str, port: int, model_name: str, version: int | None = None,
                 timeout: float = 30.0):
        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        self.model_name, self.version, self.timeout = model_name, version, timeout
        self.channel = grpc.insecure_channel(f"{host}:{port}")
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)

    def predict(self, inputs: dict[str, Any], signature_name: str = DEFAULT_SIGNATURE
                ) -> dict[str, np.ndarray]:
        """Runs a signature on named inputs; raises ServingError with the gRPC code name."""
        import grpc
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
            raise ServingError(e.code().name, e.details()) from None
        return {n: tf.make_ndarray(t) for n, t in response.outputs.items()}

    def close(self) -> None:
        self.channel.close()


def read_items(path: str | Path) -> dict[str, str]:
    """``item_id<TAB>text`` lines (an ``item_id`` header line is skipped) -> {id: text}."""
    items = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        item_id, _, text = line.partition("\t")
        if item_id and item_id != "item_id":
            items[item_id] = text
    return items


def find_items_file(model_base_path: str | None, job_dir: str | None, model_name: str
                    ) -> Path | None:
    """The newest version's ``assets.extra/items.tsv``, if there is one."""
    base = Path(model_base_path) if model_base_path else (
        Path(job_dir) / "export" / model_name if job_dir else None)
    if base is None or (version := layout.latest_version(base)) is None:
        return None
    path = base / str(version) / "assets.extra" / "items.tsv"
    return path if path.is_file() else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m serving.client",
                                description="Query a tfrec model server and print the top items.")
    p.add_argument("--query", action="append", required=True, help="query text (repeatable)")
    p.add_argument("--k", type=int, default=None, help="print at most k items per query")
    p.add_argument("--exclude", nargs="*", default=None, metavar="ID",
                   help="item ids never to return (applied to every query)")
    p.add_argument("--grpc", action="store_true", help="use gRPC instead of REST")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=None, help="default 8501 (REST) / 8500 (gRPC)")
    p.add_argument("--model_name", default="tfrec")
    p.add_argument("--signature_name", default=DEFAULT_SIGNATURE)
    p.add_argument("--items", help="TSV item_id<TAB>text for printing item texts")
    p.add_argument("--model_base_path", help="EXPORT/<model_name>, to find assets.extra/items.tsv")
    p.add_argument("--job-dir", "--job_dir", dest="job_dir", help="a training job dir (has export/)")
    args = p.parse_args(argv)
    port = args.port or (8500 if args.grpc else 8501)
    client = (GrpcClient if args.grpc else RestClient)(args.host, port, args.model_name)
    exclude = [list(args.exclude)] * len(args.query) if args.exclude else None
    try:
        results = client.retrieve(args.query, k=args.k, exclude=exclude,
                                  signature_name=args.signature_name)
    except (ServingError, OSError) as e:
        print(f"serving.client: {e}", file=sys.stderr)
        return 1
    items_path = args.items or find_items_file(args.model_base_path, args.job_dir, args.model_name)
    texts = read_items(items_path) if items_path else {}
    for query, pairs in zip(args.query, results):
        print(f"query: {query}")
        for rank, (item_id, score) in enumerate(pairs, 1):
            text = f"  {texts[item_id]}" if item_id in texts else ""
            print(f"{rank:4d}  {item_id}  {score:.4f}{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
