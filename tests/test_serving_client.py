"""export/serving_client.py against stand-in servers speaking TF Serving's protocols.

TF Serving's model server is not installable here (no tensorflow_model_server binary on PyPI
or Debian), so these servers implement its documented REST (columnar "inputs"/"outputs") and
gRPC (PredictionService.Predict) formats around the real exported SavedModel. They test the
client's requests and parsing; they are not a claim about TF Serving itself.
"""

import http.server
import json
import pathlib
import sys
import threading
from concurrent import futures

import numpy as np
import pytest
import tensorflow as tf

import s2dnas_tf as s2d
from s2dnas_tf import data, export
from s2dnas_tf.models import build_model, with_input_normalization

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "export"))
import serving_client  # noqa: E402


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    base = with_input_normalization(
        build_model("resnet8", input_shape=(8, 8, 1), width_multiplier=0.5), [8.0], [100.0]
    )
    net = s2d.transform(base, s2d.SearchSpace.from_model(base, num_stages=3).default_arch())
    path = export.export_saved_model(net, [0.2, 0.2], tmp_path_factory.mktemp("m"), "digits")
    loaded = tf.saved_model.load(path)
    images = data.load_dataset(data.DataConfig(name="digits")).x_test[:16]
    direct = loaded.signatures["serving_default"](images=tf.constant(images))
    return loaded, images, {k: v.numpy() for k, v in direct.items()}


def _rest_server(loaded):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            if not self.path.startswith("/v1/models/digits") or not self.path.endswith(":predict"):
                self.send_response(404)
                self.end_headers()
                self.wfile.write(b'{"error": "Servable not found"}')
                return
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            fn = loaded.signatures[body["signature_name"]]
            out = fn(images=tf.constant(body["inputs"]["images"], tf.float32))
            payload = json.dumps({"outputs": {k: v.numpy().tolist() for k, v in out.items()}})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(payload.encode())

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_rest_client_matches_the_saved_model(served):
    loaded, images, direct = served
    server = _rest_server(loaded)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        out = serving_client.predict_rest(url, "digits", images)
        np.testing.assert_allclose(out["logits"], direct["logits"], atol=1e-5)
        np.testing.assert_array_equal(out["exit_stage"], direct["exit_stage"])
        with pytest.raises(RuntimeError, match="404"):
            serving_client.predict_rest(url, "other", images)
    finally:
        server.shutdown()


def test_grpc_client_matches_the_saved_model(served):
    grpc = pytest.importorskip("grpc")
    apis = pytest.importorskip("tensorflow_serving.apis.prediction_service_pb2_grpc")
    from tensorflow_serving.apis import predict_pb2

    loaded, images, direct = served

    class Servicer(apis.PredictionServiceServicer):
        def Predict(self, request, context):
            assert request.model_spec.name == "digits"
            fn = loaded.signatures[request.model_spec.signature_name]
            out = fn(images=tf.constant(tf.make_ndarray(request.inputs["images"])))
            response = predict_pb2.PredictResponse()
            for name, value in out.items():
                response.outputs[name].CopyFrom(tf.make_tensor_proto(value.numpy()))
            return response

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    apis.add_PredictionServiceServicer_to_server(Servicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        out = serving_client.predict_grpc(f"127.0.0.1:{port}", "digits", images)
        np.testing.assert_allclose(out["logits"], direct["logits"], atol=1e-5)
        np.testing.assert_array_equal(out["exit_stage"], direct["exit_stage"])
        assert out["exit_stage"].dtype == np.int32
    finally:
        server.stop(0)


def test_client_refuses_bad_images():
    with pytest.raises(ValueError, match=r"\[N, H, W, C\]"):
        serving_client.predict_rest("http://127.0.0.1:1", "m", np.zeros((2, 3)))
    assert serving_client.main(["--rest=http://x", "--model=m", "--images=/missing.npy"]) == 2
