"""A bounded concurrent load test (8 clients × 500 requests) with a hot version swap mid-run."""

from __future__ import annotations

import threading
import time
from collections import Counter

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import prediction_service_pb2_grpc

from tests.serving.conftest import MODEL, install_version
from tfmmrec.export.warmup import predict_request
from tfmmrec.serving.registry import ServedModel, State
from tfmmrec.serving.server import ModelServer, ServerOptions

CLIENTS = 8
REQUESTS_PER_CLIENT = 500
SWAP_AFTER = CLIENTS * REQUESTS_PER_CLIENT // 4


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def test_hot_swap_under_load_loses_no_request(tiny_exports, tmp_path):
    base = tmp_path / MODEL
    install_version(tiny_exports.brute_force, base, 1)
    options = ServerOptions(port=0, rest_port=None, num_threads=2, poll_seconds=0.2,
                            warmup=False)
    requests = [predict_request(MODEL, "recommend", {
        "user_id": np.array([u.encode()], dtype=object), "k": np.int32(5)})
        for u in tiny_exports.user_ids]
    requests.append(predict_request(MODEL, "query_text", {
        "text": np.array([tiny_exports.texts[0].encode()], dtype=object), "k": np.int32(5)}))
    done = Counter()
    failures: list[str] = []
    versions: Counter = Counter()
    lock = threading.Lock()
    swap = threading.Event()

    def client(worker: int, port: int) -> None:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            for i in range(REQUESTS_PER_CLIENT):
                request = requests[(worker + i) % len(requests)]
                try:
                    response = stub.Predict(request, timeout=60)
                    version = response.model_spec.version.value
                except grpc.RpcError as error:
                    with lock:
                        failures.append(f"{error.code().name}: {error.details()}")
                    continue
                with lock:
                    versions[version] += 1
                    done["ok"] += 1
                    if done["ok"] == SWAP_AFTER:
                        swap.set()

    with ModelServer([ServedModel(MODEL, base)], options) as server:
        threads = [threading.Thread(target=client, args=(w, server.port)) for w in range(CLIENTS)]
        for thread in threads:
            thread.start()
        swap.wait(timeout=120)
        install_version(tiny_exports.scann, base, 2)
        for thread in threads:
            thread.join(timeout=300)
        assert not any(t.is_alive() for t in threads), "load test clients did not finish"
        wait_until(lambda: [r.state for _, r in server.registry.status(MODEL)] == [
            State.END, State.AVAILABLE], 60, "version 1 END and version 2 AVAILABLE")
        assert server.registry.available_versions(MODEL) == [2]

    assert failures == []
    assert done["ok"] == CLIENTS * REQUESTS_PER_CLIENT
    assert versions[1] > 0 and versions[2] > 0, f"the swap was not seen mid-run: {versions}"
