"""EngineConfig: four groups (sampling, acceleration, runtime, serving), every setting also a
flat keyword and attribute; bad values refused naming the setting."""

import pickle

import pytest

from clockwork_engine import EngineConfig
from clockwork_engine.config import AccelerationConfig, RuntimeConfig, SamplingConfig, ServingConfig


def test_flat_and_grouped_forms_are_one_config():
    flat = EngineConfig(mode="clockwork", steps=20, clock_every=3, backend="cpu", batching="step")
    grouped = EngineConfig(sampling=SamplingConfig(mode="clockwork", steps=20),
                           acceleration=AccelerationConfig(clock_every=3), runtime=RuntimeConfig(backend="cpu"),
                           serving=ServingConfig(batching="step"))
    assert flat == grouped and hash(flat) == hash(grouped)
    assert flat.steps == flat.sampling.steps == 20 and flat.batching == "step" and flat.clock().every == 3
    assert EngineConfig(**flat.settings()) == flat
    assert pickle.loads(pickle.dumps(flat)) == flat


def test_changes_by_flat_name_or_group():
    base = EngineConfig(mode="clockwork", steps=20)
    changed = base.with_(steps=4, runtime={"backend": "inductor"})
    assert (changed.mode, changed.steps, changed.backend) == ("clockwork", 4, "inductor")
    assert base.steps == 20  # frozen: a copy changed
    both = EngineConfig(sampling={"steps": 6}, steps=7, guidance_scale=2.0)  # flat keywords update the group
    assert (both.steps, both.guidance_scale) == (7, 2.0)
    assert EngineConfig(attention_reuse=[3, 4]).attention_reuse == (3, 4)  # JSON lists stay hashable


@pytest.mark.parametrize("kw, error, match", [
    (dict(stepz=3), TypeError, "EngineConfig has no setting 'stepz'"),
    (dict(steps=0), ValueError, "steps must be a positive int, got 0"),
    (dict(batching="sometimes"), ValueError, "batching must be one of"),
    (dict(sampling=3), TypeError, "sampling must be a SamplingConfig or a dict"),
    (dict(runtime={"backend": "tpu"}), ValueError, "backend must be"),
])
def test_bad_settings_are_refused_by_name(kw, error, match):
    with pytest.raises(error, match=match):
        EngineConfig(**kw)


def test_reading_an_unknown_setting_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no setting 'stepz'"):
        EngineConfig().stepz  # noqa: B018
