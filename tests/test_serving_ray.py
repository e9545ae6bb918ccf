"""Ray Serve: two engine replicas behind Ray Serve's HTTP proxy on a local Ray instance; both
serve, and each image equals a local engine's for the same seed."""

import base64
import io
import socket

import numpy as np
import pytest
import requests as http
from PIL import Image

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_replicas_serve_the_local_engines_images(demo_engine):
    from clockwork_engine.serving.ray_app import application

    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(application(model="demo", replicas=2, cpus=1), name="clockwork", route_prefix="/")
        replicas, seeds = set(), range(8)
        for seed in seeds:
            r = http.post(f"http://127.0.0.1:{port}/v1/images/generations", timeout=120,
                          json={"prompt": "a small purple circle on the left", "seed": seed, "steps": 4})
            assert r.status_code == 200, r.text
            replicas.add(r.headers["x-clockwork-replica"])
            got = np.asarray(Image.open(io.BytesIO(base64.b64decode(r.json()["data"][0]["b64_json"]))))
            want = np.asarray(demo_engine.generate("a small purple circle on the left", seed=seed, steps=4))
            assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
        assert len(replicas) == 2  # Ray Serve spread the requests over both replicas
    finally:
        serve.shutdown()
        ray.shutdown()
