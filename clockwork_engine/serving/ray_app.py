"""Ray Serve: N engine replicas behind Ray Serve's HTTP proxy, with the same API as
`clockwork serve` (serving/http.py); each replica batches its own requests.

On a Ray cluster (or a local one):
  serve run clockwork_engine.serving.ray_app:build model=demo replicas=2 cpus=1
In Python: serve.run(application(model="demo", replicas=2)).
Each replica answers with an x-clockwork-replica header (host:pid) naming itself.
"""

from __future__ import annotations

from ray import serve


def application(model: str = "demo", replicas: int = 2, cpus: float = 1, gpus: float = 0, batching: str = "step",
                max_queue: int = 64, timeout: float | None = 60.0, api_key: str | None = None,
                max_ongoing_requests: int = 64):
    """A Ray Serve application: `replicas` copies of the engine, each in its own actor."""

    def asgi_app():  # runs on each replica: it loads its own engine
        import torch

        from clockwork_engine.serving.http import make_app
        from clockwork_engine.serving.server import engine_for

        torch.set_num_threads(max(1, int(cpus)))
        return make_app(engine_for(model, batching=batching, max_queue=max_queue, timeout=timeout),
                        api_key=api_key, model_name=model)

    ingress = serve.ingress(asgi_app)(type("ClockworkReplica", (), {}))
    return serve.deployment(ingress, name="clockwork", num_replicas=replicas, max_ongoing_requests=max_ongoing_requests,
                            ray_actor_options={"num_cpus": cpus, "num_gpus": gpus}).bind()


def build(args: dict):
    """The `serve run clockwork_engine.serving.ray_app:build key=value ...` entry point."""
    kinds = {"replicas": int, "cpus": float, "gpus": float, "max_queue": int, "timeout": float,
             "max_ongoing_requests": int}
    return application(**{k: kinds.get(k, str)(v) for k, v in args.items()})
