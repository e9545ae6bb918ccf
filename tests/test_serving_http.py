"""The HTTP API: OpenAI's images API (driven by the official openai client too), status codes,
the API key, the body limit, metrics, dropped connections, 8 clients mixing good and bad
requests, and the OpenAPI schema fuzzed by schemathesis (never a 5xx)."""

import base64
import io
import socket
import threading
import time

import numpy as np
import openai
import pytest
import requests as http
import schemathesis
import uvicorn
from conftest import make_tiny_pipeline
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from PIL import Image

from clockwork_engine import Engine, EngineConfig
from clockwork_engine.serving.http import make_app

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def engine():
    return Engine.from_pipeline(make_tiny_pipeline(seed=5), config=EngineConfig(
        mode="clockwork", adaptor="identity", steps=3, batching="step", max_queue=8, request_timeout=60.0))


@pytest.fixture(scope="module")
def alone(engine):
    return engine.with_config(batching="off")


@pytest.fixture(scope="module")
def client(engine):
    return TestClient(make_app(engine, api_key=KEY, model_name="tiny"))


class Server:
    """uvicorn on a free loopback port, in a thread."""

    def __init__(self, app):
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def server(engine):
    s = Server(make_app(engine, api_key=KEY, model_name="tiny"))
    yield s
    s.stop()


def decode(item) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(item["b64_json"]))))


def same_image(png: np.ndarray, pil) -> bool:
    # a row batched with others differs from the request alone by float summation order only
    return png.shape == np.asarray(pil).shape and np.abs(png.astype(int) - np.asarray(pil).astype(int)).max() <= 1


def test_images_equal_the_engine_alone(client, alone):
    r = client.post("/v1/images/generations", headers=AUTH, json={"prompt": "a red circle", "n": 2, "seed": 7,
                                                                   "steps": 4, "guidance_scale": 3.0})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert [d["seed"] for d in data] == [7, 8]
    for item, seed in zip(data, (7, 8), strict=True):
        assert same_image(decode(item), alone.generate("a red circle", seed=seed, steps=4, guidance_scale=3.0))
    r = client.post("/v1/images/generations", headers=AUTH, json={"prompt": "a red circle", "size": "32x16",
                                                                   "seed": 1, "mode": "full", "scheduler": "euler-a"})
    assert r.status_code == 200 and decode(r.json()["data"][0]).shape == (16, 32, 3)


@pytest.mark.parametrize("body, message", [
    ({"prompt": "a red circle", "size": "17x16"}, "multiple of"),
    ({"prompt": "a red circle", "size": "big"}, "WIDTHxHEIGHT"),
    ({"prompt": "   "}, "empty"),
    ({"prompt": "a red circle", "n": 0}, "n:"),
    ({"prompt": "a red circle", "steps": 0}, "steps:"),
    ({"prompt": "a red circle", "response_format": "url"}, "b64_json"),
    ({"prompt": "a red circle", "scheduler": "nope"}, "unknown scheduler"),
    ({"prompt": "a red circle", "colour": "red"}, "colour"),
    ({"prompt": "a red circle", "guidance_scale": 1e9}, "guidance_scale"),
    ({"prompt": "a red circle", "steps": 1000}, "cannot run 1000 steps"),
    ({"prompt": "a red circle", "lora": {"style": 0.8}}, "no LoRA named ['style'] is loaded"),
    ({"prompt": "a red circle", "lora": {"style": "x"}}, "lora.style"),
    ({}, "prompt"),
])
def test_bad_input_is_400_with_the_message(client, body, message):
    r = client.post("/v1/images/generations", headers=AUTH, json=body)
    assert r.status_code == 400 and message in r.json()["error"]["message"], r.text


def test_not_json_and_too_large_bodies(client):
    r = client.post("/v1/images/generations", headers={**AUTH, "content-type": "application/json"}, content=b"{not")
    assert r.status_code == 400
    r = client.post("/v1/images/generations", headers=AUTH, json={"prompt": "x" * 100_000})
    assert r.status_code == 413 and "bytes" in r.json()["error"]["message"]


def test_api_key(client):
    body = {"prompt": "a red circle", "steps": 1}
    assert client.post("/v1/images/generations", json=body).status_code == 401
    wrong = {"Authorization": "Bearer wrong"}
    assert client.post("/v1/images/generations", json=body, headers=wrong).status_code == 401
    assert client.get("/healthz").json()["status"] == "ok"  # open, for load balancers


def test_deadline_is_504(client):
    r = client.post("/v1/images/generations", headers=AUTH, json={"prompt": "a red circle", "steps": 500,
                                                                   "timeout": 0.05})
    assert r.status_code == 504 and "time limit" in r.json()["error"]["message"]


def test_metrics(client):
    client.post("/v1/images/generations", headers=AUTH, json={"prompt": "a red circle", "steps": 2})
    text = client.get("/metrics").text
    for name in ("clockwork_queue_depth", "clockwork_running_images", "clockwork_batch_size_bucket",
                 "clockwork_request_latency_seconds_bucket", 'clockwork_requests_total{outcome="ok"}',
                 'clockwork_requests_total{outcome="bad_request"}'):
        assert name in text


def test_the_openai_client(server, alone):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0)
    result = client.images.generate(prompt="a blue square", n=2, size="16x16", response_format="b64_json",
                                    extra_body={"seed": 11, "steps": 3})
    assert len(result.data) == 2
    assert same_image(decode(result.data[1].model_dump()), alone.generate("a blue square", seed=12, steps=3))
    with pytest.raises(openai.BadRequestError, match="multiple of"):
        client.images.generate(prompt="a blue square", size="17x16", response_format="b64_json")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0).images.generate(prompt="x")


def test_full_queue_is_429_and_loses_nothing(engine, server):
    codes = []

    def post(k):
        r = http.post(f"{server.url}/v1/images/generations", headers=AUTH, timeout=60,
                      json={"prompt": "a red circle", "n": 4, "seed": k, "steps": 2})
        codes.append(r.status_code)

    threads = [threading.Thread(target=post, args=(k,)) for k in range(9)]
    with engine.runner.lock:  # the model is busy
        submitted = engine.batcher.counts["submitted"]
        threads[0].start()
        while engine.batcher.counts["submitted"] == submitted or engine.batcher.queue_depth():
            time.sleep(0.01)  # the first request is taken; the scheduler now waits for the model
        for t in threads[1:]:
            t.start()
        deadline = time.monotonic() + 30
        while len(codes) < 6 and time.monotonic() < deadline:  # 2 requests of 4 images fill the queue of 8
            time.sleep(0.05)
    for t in threads:
        t.join(timeout=60)
    assert sorted(codes) == [200] * 3 + [429] * 6


def test_dropped_connection_frees_the_row(engine, server):
    def cancelled() -> float:
        line = [x for x in http.get(f"{server.url}/metrics").text.splitlines()
                if x.startswith('clockwork_requests_total{outcome="cancelled"}')]
        return float(line[0].split()[-1]) if line else 0.0

    before = cancelled()
    body = b'{"prompt": "a red circle", "steps": 900}'
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  + f"Authorization: Bearer {KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        deadline = time.monotonic() + 30
        while engine.batcher.running() == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert engine.batcher.running() == 1
    deadline = time.monotonic() + 30
    while (engine.batcher.running() or cancelled() == before) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.batcher.running() == 0 and cancelled() == before + 1
    assert http.get(f"{server.url}/healthz").status_code == 200


@pytest.fixture(scope="module")
def roomy_server(engine):
    s = Server(make_app(engine.with_config(max_queue=64), api_key=KEY))  # 8 clients never fill its queue
    yield s
    s.stop()


def test_eight_clients_mixing_good_and_bad_requests(roomy_server, alone):
    """Each valid request gets the image it gets alone; bad, timed-out and dropped ones lose nothing else."""
    failures, server = [], roomy_server

    def client(c):
        for k in range(5):
            kind = (c + k) % 4
            seed = 100 * c + k
            try:
                if kind == 0:  # bad input
                    r = http.post(f"{server.url}/v1/images/generations", headers=AUTH, timeout=60,
                                  json={"prompt": "a red circle", "size": "15x15"})
                    assert r.status_code == 400
                elif kind == 1:  # past its deadline
                    r = http.post(f"{server.url}/v1/images/generations", headers=AUTH, timeout=60,
                                  json={"prompt": "a red circle", "steps": 800, "timeout": 0.02})
                    assert r.status_code == 504
                elif kind == 2:  # the client gives up
                    with pytest.raises(http.exceptions.Timeout):
                        http.post(f"{server.url}/v1/images/generations", headers=AUTH, timeout=0.05,
                                  json={"prompt": "a red circle", "steps": 800})
                else:
                    steps = 2 + k % 3
                    r = http.post(f"{server.url}/v1/images/generations", headers=AUTH, timeout=60,
                                  json={"prompt": "a green triangle", "seed": seed, "steps": steps})
                    assert r.status_code == 200, r.text
                    assert same_image(decode(r.json()["data"][0]), alone.generate("a green triangle", seed=seed,
                                                                                  steps=steps))
            except BaseException as e:  # noqa: BLE001  (pytest.raises fails with an Exception of its own)
                failures.append((c, k, kind, repr(e)))

    threads = [threading.Thread(target=client, args=(c,)) for c in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not failures


@pytest.fixture(scope="module")
def fuzz_app():
    engine = Engine.from_pipeline(make_tiny_pipeline(seed=6), config=EngineConfig(
        mode="clockwork", adaptor="identity", steps=2, batching="step", max_queue=64, max_size_factor=2))
    return make_app(engine)


schema = schemathesis.pytest.from_fixture("fuzz_schema")


@pytest.fixture(scope="module")
def fuzz_schema(fuzz_app):
    return schemathesis.openapi.from_asgi("/openapi.json", fuzz_app)


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_fuzzed_requests_never_get_a_5xx(case):
    response = case.call(timeout=300)  # a fuzzed request may ask for hundreds of steps
    # 504 is the answer by design to a request whose own `timeout` ran out (the app sets no default)
    asked_for_it = response.status_code == 504 and isinstance(case.body, dict) and "timeout" in case.body
    assert response.status_code < 500 or asked_for_it, response.text
    if response.status_code >= 400:
        assert response.json()["error"]["message"]


def test_clockwork_serve_command(tiny_dir):
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "clockwork_engine.tools.cli", "serve", "--model", tiny_dir,
                             "--port", str(port), "--api-key", KEY], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                if http.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except http.exceptions.ConnectionError:
                time.sleep(0.1)
        r = http.post(f"{url}/v1/images/generations", headers=AUTH, json={"prompt": "a red circle", "steps": 2},
                      timeout=60)
        assert r.status_code == 200 and decode(r.json()["data"][0]).shape == (16, 16, 3)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
