"""The gRPC API of the model server: TF Serving's PredictionService and ModelService.

``Predict`` and ``GetModelMetadata`` (``metadata_field: "signature_def"``) on
``tensorflow.serving.PredictionService``, ``GetModelStatus`` on
``tensorflow.serving.ModelService``. Client errors are INVALID_ARGUMENT (or
NOT_FOUND for an unknown model/version), as in TF Serving. Every input's declared
shape is checked against the signature, the server's ``Limits`` and the number of
values sent before ``tf.make_ndarray`` fills it. A call's deadline bounds its wait
in the batcher, and a client that goes away (CANCELLED) frees its place in the queue.
Server faults are INTERNAL, logged once with a request id.
"""

from __future__ import annotations

import time

import tfrec  # noqa: F401  (sets TF_USE_LEGACY_KERAS before tensorflow loads)
import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2
from tensorflow_serving.apis import model_service_pb2_grpc, predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

from serving.limits import check_tensor_proto
from serving.service import ModelService, internal_error, printable
from serving.signatures import DEFAULT_SIGNATURE, RequestError, Signature, one_line

_STATES = {"AVAILABLE": get_model_status_pb2.ModelVersionStatus.AVAILABLE,
           "LOADING": get_model_status_pb2.ModelVersionStatus.LOADING,
           "END": get_model_status_pb2.ModelVersionStatus.END}


def _abort(context: grpc.ServicerContext, e: RequestError) -> None:
    context.abort(getattr(grpc.StatusCode, e.code, grpc.StatusCode.UNKNOWN), printable(e.message))


def _version(spec) -> int | None:
    return spec.version.value if spec.HasField("version") else None


def _deadline(context: grpc.ServicerContext) -> float:
    remaining = context.time_remaining()
    return float("inf") if remaining is None else time.monotonic() + remaining


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict and GetModelMetadata over the models of a ModelService."""

    def __init__(self, service: ModelService):
        self.ms = service

    def Predict(self, request: predict_pb2.PredictRequest, context: grpc.ServicerContext
                ) -> predict_pb2.PredictResponse:
        spec = request.model_spec
        signature = spec.signature_name or DEFAULT_SIGNATURE
        try:
            with self.ms.call("grpc", spec.name, _deadline(context),
                              cancelled=lambda: not context.is_active()) as call:
                try:
                    return self._predict(call, request, signature)
                except RequestError:
                    raise
                except Exception as e:  # noqa: BLE001 - a server fault: logged, answered INTERNAL
                    raise internal_error(call.id, f"Predict {spec.name[:100]}", e) from None
        except RequestError as e:
            _abort(context, e)
            raise  # not reached: abort raises

    def _predict(self, call, request: predict_pb2.PredictRequest, signature: str) -> predict_pb2.PredictResponse:
        spec = request.model_spec
        model, outputs = self.ms.predict(call, spec.name, _version(spec), signature,
                                         lambda sig: self._parse(request, sig))
        response = predict_pb2.PredictResponse()
        response.model_spec.name = spec.name
        response.model_spec.version.value = model.version
        response.model_spec.signature_name = signature
        for alias in request.output_filter:
            if alias not in outputs:
                raise RequestError(f"output tensor alias not found in signature: {alias}")
        for name in request.output_filter or outputs:
            response.outputs[name].CopyFrom(tf.make_tensor_proto(outputs[name]))
        return response

    def _parse(self, request: predict_pb2.PredictRequest, sig: Signature
               ) -> tuple[dict[str, np.ndarray], int]:
        extra = sorted(set(request.inputs) - set(sig.inputs))
        missing = sorted(set(sig.required) - set(request.inputs))
        if extra or missing:
            raise RequestError(f"input names do not match signature '{sig.name}': sent extra: "
                               f"{{{','.join(n[:100] for n in extra)}}}, missing but required: "
                               f"{{{','.join(missing)}}}; inputs are {{{','.join(sorted(sig.inputs))}}}")
        for name, proto in request.inputs.items():  # every check before the first array is made
            want = sig.inputs[name]
            if proto.dtype != want.dtype.as_datatype_enum:
                try:
                    got = tf.dtypes.as_dtype(proto.dtype).name if proto.dtype else "invalid"
                except TypeError:
                    got = f"invalid ({proto.dtype})"
                raise RequestError(f"input '{name}' has dtype {got} but the signature "
                                   f"expects {want.dtype.name}")
            check_tensor_proto(name, proto, sig, self.ms.limits)
        arrays = {}
        for name, proto in request.inputs.items():
            try:
                arrays[name] = tf.make_ndarray(proto)
            except Exception as e:  # noqa: BLE001 - malformed TensorProto
                raise RequestError(f"input '{name}': malformed TensorProto: {one_line(e)}") from None
        return sig.complete(arrays, self.ms.max_batch_size)

    def GetModelMetadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest,
                         context: grpc.ServicerContext
                         ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        try:
            fields = list(request.metadata_field)
            if not fields:
                raise RequestError("GetModelMetadataRequest must specify at least one "
                                   "metadata_field")
            for field in fields:
                if field != "signature_def":
                    raise RequestError(f"Metadata field {field[:100]} is not supported")
            model = self.ms.model(request.model_spec.name, _version(request.model_spec))
        except RequestError as e:
            _abort(context, e)
            raise
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = model.name
        response.model_spec.version.value = model.version
        response.metadata["signature_def"].Pack(model.signature_defs)
        return response


class ModelStatusService(model_service_pb2_grpc.ModelServiceServicer):
    """GetModelStatus: the served version AVAILABLE, failed loads LOADING (retrying) or END."""

    def __init__(self, service: ModelService):
        self.ms = service

    def GetModelStatus(self, request: get_model_status_pb2.GetModelStatusRequest,
                       context: grpc.ServicerContext
                       ) -> get_model_status_pb2.GetModelStatusResponse:
        try:
            rows = self.ms.status(request.model_spec.name, _version(request.model_spec))
        except RequestError as e:
            _abort(context, e)
            raise
        response = get_model_status_pb2.GetModelStatusResponse()
        for row in rows:
            status = response.model_version_status.add()
            status.version = row.version
            status.state = _STATES[row.state]
            if row.error_code != "OK":
                status.status.error_code = grpc.StatusCode.UNKNOWN.value[0]
                status.status.error_message = row.error_message
        return response


def add_services(service: ModelService, grpc_server: grpc.Server) -> None:
    """Registers both gRPC services of ``service`` on ``grpc_server``."""
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(service), grpc_server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelStatusService(service), grpc_server)

