"""Bad input gets a clear error naming the problem, and the engine keeps serving."""

import json
import math
import os
import shutil

import pytest
import torch

from clockwork_engine import Engine, EngineConfig, ModelLoadError


@pytest.fixture(scope="module")
def engine(tiny_pipe):
    return Engine.from_pipeline(tiny_pipe)


GOOD = dict(steps=2, seed=0, height=16, width=16, output="latent")


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(prompt=""), ValueError, r"prompt\[0\] is empty"),
    (dict(prompt="   "), ValueError, "empty"),
    (dict(prompt=[]), ValueError, "prompt list is empty"),
    (dict(prompt=None), TypeError, "prompt must be a str"),
    (dict(prompt=b"a red circle"), TypeError, "prompt must be a str"),
    (dict(prompt=["ok", 3]), TypeError, r"prompt\[1\] must be a str"),
    (dict(prompt=["a"] * 17), ValueError, "at most 16"),
    (dict(prompt="a\x00b"), ValueError, "NUL"),
    (dict(steps=0), ValueError, r"steps must be in \[1, 1000\]"),
    (dict(steps=-3), ValueError, "steps"),
    (dict(steps=2.5), TypeError, "steps must be an int"),
    (dict(steps=True), TypeError, "steps must be an int"),
    (dict(guidance_scale=math.nan), ValueError, "guidance_scale must be finite"),
    (dict(guidance_scale=math.inf), ValueError, "guidance_scale must be finite"),
    (dict(guidance_scale="5"), TypeError, "guidance_scale must be a number"),
    (dict(guidance_scale=5.4e21), ValueError, r"guidance_scale must be in \[0, 100\]"),  # found by CI's Hypothesis
    (dict(guidance_scale=-1.0), ValueError, r"guidance_scale must be in \[0, 100\]"),
    (dict(height=20), ValueError, "height must be a multiple of 8"),
    (dict(width=12), ValueError, "width must be a multiple of 8"),
    (dict(height=16 * 1000), ValueError, r"height must be in \[1, 64\]"),
    (dict(height=0), ValueError, r"height must be in \[1, 64\]"),  # refused like any bad size, not the default
    (dict(width=0), ValueError, r"width must be in \[1, 64\]"),
    (dict(seed=-1), ValueError, "seed must be in"),
    (dict(seed=2**64), ValueError, "seed must be in"),
    (dict(seed="0"), TypeError, "seed must be an int"),
    (dict(output="png"), ValueError, "output must be one of"),
    (dict(negative_prompt=["x", "y"]), ValueError, "negative_prompt has 2 entries for 1 prompts"),
    (dict(callback=3), TypeError, "callback must be callable"),
])
def test_generate_rejects_bad_arguments(engine, kwargs, error, match):
    call = {"prompt": "a red circle", **GOOD, **kwargs}
    with pytest.raises(error, match=match):
        engine.generate(call.pop("prompt"), **call)
    # ...and keeps serving, with the same result as before.
    ok = engine.generate("a red circle", **GOOD)
    assert torch.isfinite(ok).all()


def test_largest_guidance_is_served(engine):
    from clockwork_engine.config import MAX_GUIDANCE

    assert torch.isfinite(engine.generate("a red circle", **{**GOOD, "guidance_scale": MAX_GUIDANCE})).all()


def test_failed_request_leaves_no_state(engine):
    before = engine.generate("a blue square", **GOOD)

    def cancel(step, n, latents):
        if step == 1:
            raise KeyboardInterrupt("cancelled by the caller")

    with pytest.raises(KeyboardInterrupt):
        engine.generate("a blue square", steps=4, seed=0, height=16, width=16, callback=cancel)
    torch.testing.assert_close(engine.generate("a blue square", **GOOD), before, rtol=0, atol=0)


def test_long_prompt_is_truncated_with_a_warning(engine):
    with pytest.warns(UserWarning, match="truncated"):
        out = engine.generate("a red circle " * 40, **GOOD)
    assert out.shape == (4, 8, 8)


def test_nan_weights_give_a_clear_error(tiny_pipe):
    import copy

    from clockwork_engine import NonFiniteError

    pipe = copy.deepcopy(tiny_pipe)
    with torch.no_grad():
        pipe.unet.conv_out.bias.fill_(float("nan"))
    with pytest.raises(NonFiniteError, match="NaN"):
        Engine.from_pipeline(pipe).generate("a red circle", **GOOD)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="unknown mode"):
        EngineConfig(mode="turbo")
    with pytest.raises(ValueError, match="steps must be a positive int"):
        EngineConfig(steps=0)
    with pytest.raises(ValueError, match=r"guidance_scale must be in \[0, 100\]"):
        EngineConfig(guidance_scale=1e30)
    with pytest.raises(ValueError, match="unknown preset"):
        Engine.from_pretrained("demo", config="nope")
    with pytest.raises(TypeError, match="config must be"):
        Engine.from_pretrained("demo", config=3)


# ------------------------------------------------------------------ model directories
def _copy(tiny_dir, tmp_path):
    dst = tmp_path / "pipe"
    shutil.copytree(tiny_dir, dst)
    return dst


def test_loads_a_full_diffusers_directory(tiny_dir, tiny_pipe):
    loaded = Engine.from_pretrained(str(tiny_dir)).generate("a red circle", **GOOD)
    ref = Engine.from_pipeline(tiny_pipe).generate("a red circle", **GOOD)
    torch.testing.assert_close(loaded, ref, rtol=0, atol=0)


def test_missing_directory():
    with pytest.raises(ModelLoadError, match="does not exist"):
        Engine.from_pretrained("/no/such/model")
    with pytest.raises(TypeError, match="model must be"):
        Engine.from_pretrained(42)


def test_not_a_pipeline_directory(tmp_path):
    with pytest.raises(ModelLoadError, match="model_index.json is missing"):
        Engine.from_pretrained(str(tmp_path))


def test_corrupt_model_index(tiny_dir, tmp_path):
    d = _copy(tiny_dir, tmp_path)
    (d / "model_index.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="model_index.json is corrupt"):
        Engine.from_pretrained(str(d))


def test_truncated_weights(tiny_dir, tmp_path):
    d = _copy(tiny_dir, tmp_path)
    weights = d / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match="could not load unet"):
        Engine.from_pretrained(str(d))


def test_garbage_weights(tiny_dir, tmp_path):
    d = _copy(tiny_dir, tmp_path)
    (d / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(os.urandom(4096))
    with pytest.raises(ModelLoadError, match="could not load vae"):
        Engine.from_pretrained(str(d))


def test_pickle_checkpoint_is_refused(tiny_dir, tmp_path):
    d = _copy(tiny_dir, tmp_path)
    unet_dir = d / "unet"
    state = {k: v for k, v in torch.nn.Module().state_dict().items()}
    (unet_dir / "diffusion_pytorch_model.safetensors").unlink()
    torch.save(state, unet_dir / "diffusion_pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="pickle checkpoints .* safetensors only"):
        Engine.from_pretrained(str(d))


def test_mismatched_components(tiny_dir, tmp_path):
    d = _copy(tiny_dir, tmp_path)
    cfg_path = d / "unet" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["cross_attention_dim"] = 64
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="unet"):
        Engine.from_pretrained(str(d))


@pytest.mark.parametrize("make, match", [
    (lambda cfg: __import__("diffusers").IPNDMScheduler.from_config(cfg), "IPNDMScheduler is not supported"),
    (lambda cfg: __import__("diffusers").DPMSolverMultistepScheduler.from_config(cfg, thresholding=True),
     "thresholding=True is not supported"),
    (lambda cfg: __import__("diffusers").DDPMScheduler.from_config(cfg, variance_type="learned"),
     "variance_type='learned' is not supported"),
    (lambda cfg: __import__("diffusers").UniPCMultistepScheduler.from_config(cfg, solver_type="bh1"),
     "not finite"),  # diffusers' own bh1 step gives NaN on a final sigma of 0
], ids=["ipndm", "thresholding", "learned-variance", "unipc-bh1-zero-sigma"])
def test_unsupported_scheduler_is_refused_naming_it(tiny_pipe, make, match):
    import copy

    pipe = copy.copy(tiny_pipe)
    pipe.scheduler = make(tiny_pipe.scheduler.config)
    with pytest.raises(ValueError, match=match):
        Engine.from_pipeline(pipe)


def test_eta_for_a_scheduler_without_it_is_refused(tiny_pipe):
    with pytest.raises(ValueError, match="takes no eta"):
        Engine.from_pipeline(tiny_pipe).with_config(eta=0.5)


def test_unknown_scheduler_name_lists_the_known_ones(tiny_pipe):
    with pytest.raises(ValueError, match="unknown scheduler 'eulr'; known: .*euler-a"):
        Engine.from_pipeline(tiny_pipe).with_config(scheduler="eulr")
