"""Serving: the request scheduler (continuous batching, deadlines, a bounded queue), the lane
runner that executes one batch step, the HTTP API over them and its Ray Serve deployment."""

from clockwork_engine.serving.scheduler import BatchScheduler, QueueFull

__all__ = ["BatchScheduler", "QueueFull"]
