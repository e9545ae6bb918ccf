"""LoRA fused in place (models/lora.py): two LoRAs with scales on the UNet (attention and conv
layers) and on the text encoder equal diffusers' load_lora_weights + set_adapters within 1e-4;
unloading restores the base weights bit for bit; a swap recaptures nothing; bad LoRAs are
refused by name."""

import copy

import pytest
import torch
from conftest import make_tiny_pipeline
from diffusers import StableDiffusionPipeline
from peft import LoraConfig, get_peft_model_state_dict
from test_standard_dirs import sd_pipeline

from clockwork_engine import Engine, EngineConfig
from clockwork_engine.models.lora import LoraLoadError

KW = dict(steps=4, guidance_scale=5.0, seed=[1, 2], height=16, width=16, output="latent")
PROMPTS = ["a red circle", "a blue square"]


def make_lora(pipe, folder, seed: int, text: bool = False):
    """A random LoRA of the pipeline's UNet (and text encoder) saved as diffusers saves one."""
    torch.manual_seed(seed)
    unet, text_encoder = copy.deepcopy(pipe.unet), copy.deepcopy(pipe.text_encoder)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                target_modules=["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2"]))
    layers = dict(unet_lora_layers=get_peft_model_state_dict(unet))
    if text:
        text_encoder.add_adapter(LoraConfig(r=2, lora_alpha=2, init_lora_weights=False,
                                            target_modules=["q_proj", "k_proj", "v_proj", "out_proj"]))
        layers["text_encoder_lora_layers"] = get_peft_model_state_dict(text_encoder)
    StableDiffusionPipeline.save_lora_weights(str(folder), safe_serialization=True, **layers)
    return str(folder)


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    """An SD layout with a CLIP text encoder (diffusers reads text-encoder LoRAs for CLIP)."""
    from clockwork_engine.demo import models

    p = sd_pipeline(tmp_path_factory.mktemp("sd"), models.build_scheduler())
    p.safety_checker = None
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def loras(pipe, tmp_path_factory):
    root = tmp_path_factory.mktemp("loras")
    return make_lora(pipe, root / "a", 1, text=True), make_lora(pipe, root / "b", 2)


def diffusers_latents(pipe, adapters):
    ref = copy.deepcopy(pipe)
    for name, (path, _) in adapters.items():
        ref.load_lora_weights(path, adapter_name=name)
    ref.set_adapters(list(adapters), adapter_weights=[scale for _, scale in adapters.values()])
    return ref(PROMPTS, num_inference_steps=4, guidance_scale=5.0, height=16, width=16, output_type="latent",
               generator=[torch.Generator().manual_seed(s) for s in (1, 2)]).images


def test_two_loras_with_scales_match_diffusers(pipe, loras):
    engine = Engine.from_pipeline(copy.deepcopy(pipe), config="full")
    engine.load_lora(loras[0], name="a", scale=0.7)
    engine.load_lora(loras[1], name="b", scale=0.5)
    assert engine.loras == {"a": 0.7, "b": 0.5}
    ref = diffusers_latents(pipe, {"a": (loras[0], 0.7), "b": (loras[1], 0.5)})
    got = engine.generate(PROMPTS, **KW)
    torch.testing.assert_close(got, ref, atol=1e-4 * max(1.0, ref.abs().max().item()), rtol=0)


def test_rescale_swap_and_unload_recapture_nothing(pipe, loras):
    engine = Engine.from_pipeline(copy.deepcopy(pipe), config="full")
    weights = {k: v.clone() for k, v in engine.runner.model.state_dict().items()}
    base = engine.generate(PROMPTS, **KW)
    misses = engine.graphs.misses
    engine.load_lora(loras[0], name="a", scale=1.0)
    one = engine.generate(PROMPTS, **KW)
    engine.set_lora_scales({"a": 0.3})
    rescaled = engine.generate(PROMPTS, **KW)
    fresh = Engine.from_pipeline(copy.deepcopy(pipe), config="full")
    fresh.load_lora(loras[0], name="a", scale=0.3)
    torch.testing.assert_close(rescaled, fresh.generate(PROMPTS, **KW), atol=1e-5, rtol=0)
    assert not torch.allclose(one, base, atol=1e-3) and not torch.allclose(rescaled, one, atol=1e-4)
    engine.unload_lora()
    assert engine.loras == {} and engine.graphs.misses == misses  # one key, built once, replayed throughout
    assert all(torch.equal(v, weights[k]) for k, v in engine.runner.model.state_dict().items())
    assert torch.equal(engine.generate(PROMPTS, **KW), base)  # the text encoder's cached prompts were dropped too


def test_bad_loras_are_refused_by_name(pipe, loras, tmp_path):
    engine = Engine.from_pipeline(copy.deepcopy(pipe), config="full")
    with pytest.raises(LoraLoadError, match="could not read the LoRA"):
        engine.load_lora(str(tmp_path / "missing.safetensors"))
    other = make_tiny_pipeline(seed=3)
    other.unet = type(other.unet)(**{**dict(other.unet.config), "block_out_channels": (16, 32, 32)})
    other.text_encoder = pipe.text_encoder
    with pytest.raises(LoraLoadError, match="made for another model"):
        engine.load_lora(make_lora(other, tmp_path / "other", 3))
    with pytest.raises(ValueError, match=r"no LoRA named \['c'\]"):
        engine.set_lora_scales({"c": 1.0})
    with pytest.raises(ValueError, match="frozen weights"):
        Engine.from_pipeline(copy.deepcopy(pipe), config=EngineConfig(backend="inductor")).load_lora(loras[0])
    assert engine.loras == {}  # nothing half-applied
    assert torch.isfinite(engine.generate(PROMPTS, **KW)).all()


def test_loras_are_refused_on_a_transformer(tmp_path, loras):
    from test_sd3 import make_sd3_pipeline

    with pytest.raises(LoraLoadError, match="LoRAs run on UNet models"):
        Engine.from_pipeline(make_sd3_pipeline(tmp_path), config="full").load_lora(loras[0])


def test_an_sdxl_lora_matches_diffusers(tmp_path):
    from diffusers import StableDiffusionXLPipeline
    from test_sdxl import make_sdxl_pipeline

    sdxl = make_sdxl_pipeline(tmp_path / "tok")
    sdxl.set_progress_bar_config(disable=True)
    torch.manual_seed(4)
    unet = copy.deepcopy(sdxl.unet)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=["to_q", "to_v", "conv1"]))
    StableDiffusionXLPipeline.save_lora_weights(str(tmp_path / "xl"), unet_lora_layers=get_peft_model_state_dict(unet),
                                                safe_serialization=True)
    engine = Engine.from_pipeline(copy.deepcopy(sdxl), config="full")
    engine.load_lora(str(tmp_path / "xl"), scale=0.8)
    ref = copy.deepcopy(sdxl)
    ref.load_lora_weights(str(tmp_path / "xl"), adapter_name="xl")
    ref.set_adapters(["xl"], adapter_weights=[0.8])
    want = ref(PROMPTS, num_inference_steps=4, guidance_scale=5.0, height=16, width=16, output_type="latent",
               generator=[torch.Generator().manual_seed(s) for s in (1, 2)]).images
    got = engine.generate(PROMPTS, **KW)
    torch.testing.assert_close(got, want, atol=1e-4 * max(1.0, want.abs().max().item()), rtol=0)


def test_requests_run_under_their_own_lora_sets_and_batch_per_set(pipe, loras):
    """A request names its LoRA set ({name: scale}) or runs under the default one; the server
    batches rows of one set together and each row gets the image it gets alone."""
    from clockwork_engine import request

    alone = Engine.from_pipeline(copy.deepcopy(pipe), config="full")
    alone.load_lora(loras[0], name="a", scale=1.0)
    alone.load_lora(loras[1], name="b", scale=0.5)
    alone.set_lora_scales({"a": 0.0, "b": 0.0})  # the default set: both at zero, the base model
    sets = [None, {"a": 0.8}, {"b": 1.0}, {"a": 0.8}, None, {"b": 1.0}]
    reqs = [dict(prompt=PROMPTS[k % 2], steps=3 + k % 2, seed=k, height=16, width=16, output="latent", lora=s)
            for k, s in enumerate(sets)]
    expected = [alone.generate(**r) for r in reqs]
    assert not torch.allclose(expected[1], alone.generate(**{**reqs[1], "lora": None}), atol=1e-3)
    fresh = Engine.from_pipeline(copy.deepcopy(pipe), config="full")
    fresh.load_lora(loras[0], name="a", scale=0.8)
    torch.testing.assert_close(expected[1], fresh.generate(**{**reqs[1], "lora": None}), atol=1e-5, rtol=0)
    batched = alone.with_config(batching="step")
    with batched.runner.lock:
        futures = [batched.batcher.submit(request.parse(batched, **r)) for r in reqs]
    for f, want in zip(futures, expected, strict=True):
        torch.testing.assert_close(f.result(timeout=120), want, atol=1e-4, rtol=0)
    assert len({lane.loras for lane in batched.batcher.lanes().values()}) <= 3  # one lane a set
    with pytest.raises(ValueError, match=r"no LoRA named \['c'\] is loaded"):
        alone.generate("a red circle", steps=2, lora={"c": 1.0})


def test_an_adaptor_loads_under_a_fused_lora(tmp_path):
    """The demo's 20-step adaptor is loaded on the first 20-step request, after a LoRA was fused:
    it is checked against the base model's fingerprint (lora.base_weights), not the fused one's."""
    from clockwork_engine.clockwork.adaptors import model_fingerprint
    from clockwork_engine.demo import pipeline
    from clockwork_engine.models.lora import base_weights

    engine = Engine.from_pretrained("demo", device="cpu")
    base = model_fingerprint(engine.model)
    engine.load_lora(make_lora(pipeline.load(), tmp_path / "lora", 3), name="a", scale=0.5)
    assert model_fingerprint(engine.model) != base  # the weights changed
    assert model_fingerprint(engine.model, base_weights(engine.model)) == base
    latents = engine.generate("a red circle", steps=20, seed=0, output="latent")
    assert torch.isfinite(latents).all() and engine.operating_point(20).meta["steps"] == 20


def test_the_recolouring_lora_trainer_saves_a_lora_the_engine_loads(tmp_path):
    """demo/train_lora.py, two steps: the file it saves loads onto the demo, changes its output,
    and unloads back to the base model bit for bit."""
    from clockwork_engine.demo import train_lora

    assert sorted(train_lora.RECOLOUR) == sorted(train_lora.RECOLOUR.values())  # a permutation of the palette
    train_lora.main(["--out", str(tmp_path / "recolour"), "--steps", "2", "--batch", "4"])
    engine = Engine.from_pretrained("demo", config="full", device="cpu")
    before = engine.generate("a red circle", steps=4, seed=0, output="latent")
    engine.load_lora(str(tmp_path / "recolour"), name="recolour")
    under = engine.generate("a red circle", steps=4, seed=0, output="latent")
    engine.unload_lora("recolour")
    after = engine.generate("a red circle", steps=4, seed=0, output="latent")
    assert not torch.equal(under, before) and torch.equal(after, before)
