"""Query a TF Serving endpoint that serves an exported s2dnas_tf model, over REST or gRPC.

    # REST (TF Serving's --rest_api_port, usually 8501)
    python export/serving_client.py --rest=http://localhost:8501 --model=digits --images=x.npy
    # gRPC (--port, usually 8500; needs `pip install tensorflow-serving-api`)
    python export/serving_client.py --grpc=localhost:8500 --model=digits --images=x.npy

`--images` is a .npy file of raw images [N, H, W, C] (or one image [H, W, C]). Prints, per
image, the predicted class, its probability and the exit stage. The functions
`predict_rest` and `predict_grpc` return the signature's outputs as numpy arrays:
{"logits": [N, K], "probabilities": [N, K], "exit_stage": [N]}.

REST request (TF Serving's columnar format):
    POST {url}/v1/models/{model}[/versions/{version}]:predict
    {"signature_name": "serving_default", "inputs": {"images": <nested lists>}}
gRPC: a `tensorflow_serving.apis.predict_pb2.PredictRequest` with
`model_spec.name`, `model_spec.signature_name` and `inputs["images"]` as a TensorProto,
sent with `PredictionServiceStub.Predict`.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request

import numpy as np

OUTPUTS = ("logits", "probabilities", "exit_stage")


def _as_batch(images) -> np.ndarray:
    x = np.asarray(images, dtype=np.float32)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise ValueError(
            f"Expected raw images [N, H, W, C] or one image [H, W, C]. Received shape {x.shape}"
        )
    return x


def predict_rest(
    url: str,
    model: str,
    images,
    signature: str = "serving_default",
    version: int | None = None,
    timeout_s: float = 30.0,
) -> dict[str, np.ndarray]:
    """Sends a REST predict request and returns the outputs as numpy arrays.

    Raises:
        ValueError: Bad images.
        RuntimeError: The server answered with an error (its message is included).
    """
    x = _as_batch(images)
    path = f"/v1/models/{model}" + (f"/versions/{version}" if version is not None else "")
    body = json.dumps({"signature_name": signature, "inputs": {"images": x.tolist()}}).encode()
    request = urllib.request.Request(
        url.rstrip("/") + path + ":predict",
        data=body,
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            payload = json.loads(response.read())
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"TF Serving answered {e.code}: {e.read().decode()[:500]}") from e
    outputs = payload["outputs"]
    return {
        "logits": np.asarray(outputs["logits"], np.float32),
        "probabilities": np.asarray(outputs["probabilities"], np.float32),
        "exit_stage": np.asarray(outputs["exit_stage"], np.int32),
    }


def predict_grpc(
    target: str,
    model: str,
    images,
    signature: str = "serving_default",
    version: int | None = None,
    timeout_s: float = 30.0,
) -> dict[str, np.ndarray]:
    """Sends a gRPC PredictRequest and returns the outputs as numpy arrays.

    Raises:
        ImportError: Without tensorflow-serving-api.
        ValueError: Bad images.
        RuntimeError: The server answered with an error.
    """
    import grpc
    import tensorflow as tf

    try:
        from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
    except ImportError as e:
        raise ImportError("gRPC needs `pip install tensorflow-serving-api`.") from e
    x = _as_batch(images)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(x))
    with grpc.insecure_channel(target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        try:
            response = stub.Predict(request, timeout=timeout_s)
        except grpc.RpcError as e:
            raise RuntimeError(f"TF Serving answered {e.code()}: {e.details()}") from e
    return {name: tf.make_ndarray(response.outputs[name]) for name in OUTPUTS}


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--rest", help="REST base URL, e.g. http://localhost:8501")
    where.add_argument("--grpc", help="gRPC target, e.g. localhost:8500")
    parser.add_argument("--model", required=True, help="Served model name.")
    parser.add_argument("--images", required=True, help=".npy file of raw images.")
    parser.add_argument("--signature", default="serving_default")
    parser.add_argument("--version", type=int, default=None)
    args = parser.parse_args(argv)
    if not os.path.isfile(args.images):
        print(f"serving_client.py: --images file {args.images!r} does not exist.", file=sys.stderr)
        return 2
    try:
        images = np.load(args.images)
        if args.rest:
            out = predict_rest(args.rest, args.model, images, args.signature, args.version)
        else:
            out = predict_grpc(args.grpc, args.model, images, args.signature, args.version)
    except (ValueError, ImportError) as e:
        print(f"serving_client.py: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        print(f"serving_client.py: {e}", file=sys.stderr)
        return 1
    for i, (probs, stage) in enumerate(zip(out["probabilities"], out["exit_stage"])):
        print(f"image {i}: class {int(np.argmax(probs))} p={float(np.max(probs)):.3f} "
              f"exit stage {int(stage)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
