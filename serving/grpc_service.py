"""The gRPC API of ``serving.server``: TF Serving's PredictionService and ModelService.

``Predict`` and ``GetModelMetadata`` (``metadata_field: "signature_def"``) on
``tensorflow.serving.PredictionService``, ``GetModelStatus`` on
``tensorflow.serving.ModelService``. Client errors are INVALID_ARGUMENT (or
NOT_FOUND for an unknown model/version), as in TF Serving.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import tfrec  # noqa: F401  (sets TF_USE_LEGACY_KERAS before tensorflow loads)
import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2
from tensorflow_serving.apis import model_service_pb2_grpc, predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

from serving.signatures import DEFAULT_SIGNATURE, RequestError, Signature, one_line

if TYPE_CHECKING:
    from serving.server import ModelServer


def _abort(context: grpc.ServicerContext, e: RequestError) -> None:
    context.abort(getattr(grpc.StatusCode, e.code, grpc.StatusCode.UNKNOWN), e.message)


def _version(spec) -> int | None:
    return spec.version.value if spec.HasField("version") else None


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict and GetModelMetadata over the models of a ModelServer."""

    def __init__(self, server: ModelServer):
        self.ms = server

    def Predict(self, request: predict_pb2.PredictRequest, context: grpc.ServicerContext
                ) -> predict_pb2.PredictResponse:
        spec = request.model_spec
        signature = spec.signature_name or DEFAULT_SIGNATURE
        try:
            with self.ms.call("grpc", spec.name) as call:
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
        except RequestError as e:
            _abort(context, e)
            raise  # not reached: abort raises

    def _parse(self, request: predict_pb2.PredictRequest, sig: Signature
               ) -> tuple[dict[str, np.ndarray], int]:
        arrays = {}
        for name, proto in request.inputs.items():
            want = sig.inputs.get(name)
            if want is not None and proto.dtype != want.dtype.as_datatype_enum:
                got = tf.dtypes.as_dtype(proto.dtype).name if proto.dtype else "invalid"
                raise RequestError(f"input '{name}' has dtype {got} but the signature "
                                   f"expects {want.dtype.name}")
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


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    """GetModelStatus: the served version is AVAILABLE."""

    def __init__(self, server: ModelServer):
        self.ms = server

    def GetModelStatus(self, request: get_model_status_pb2.GetModelStatusRequest,
                       context: grpc.ServicerContext
                       ) -> get_model_status_pb2.GetModelStatusResponse:
        try:
            model = self.ms.model(request.model_spec.name, _version(request.model_spec))
        except RequestError as e:
            _abort(context, e)
            raise
        response = get_model_status_pb2.GetModelStatusResponse()
        status = response.model_version_status.add()
        status.version = model.version
        status.state = get_model_status_pb2.ModelVersionStatus.AVAILABLE
        return response


def add_services(server: ModelServer, grpc_server: grpc.Server) -> None:
    """Registers both services of ``server`` on ``grpc_server``."""
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(server), grpc_server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(server), grpc_server)
