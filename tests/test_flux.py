"""Flux in full mode equal to FluxPipeline (latents within 1e-4, scaled to their magnitude) on a
test-sized FluxTransformer2DModel: the guidance embedding on (dev) and off (schnell), two
sizes (each its own shift), a batch with per-row seeds and guidance; a saved directory; the
clockwork split over the double- and single-stream blocks; what the family refuses by name."""

import copy

import diffusers
import pytest
import torch
from conftest import TINY_VAE
from test_standard_dirs import clip_tokenizer
from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

from clockwork_engine import Engine, EngineConfig
from clockwork_engine.demo import models
from clockwork_engine.models import flux

TOL = 1e-4
PROMPTS = ["a red circle", "a blue square"]
# diffusers' own test-sized Flux transformer (tests/pipelines/flux), over 4-channel latents
TINY_FLUX = dict(patch_size=1, in_channels=16, num_layers=1, num_single_layers=2, attention_head_dim=16,
                 num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=(4, 4, 8))


def make_flux_pipeline(tokenizer_dir, guidance_embeds: bool = True):
    """A FluxPipeline of random test-sized components: CLIP 32-d pooled, T5 32-d (the joint
    attention width) over a WordPiece vocabulary (no SentencePiece model offline)."""
    torch.manual_seed(0)
    tokenizer = clip_tokenizer(tokenizer_dir)
    t5_tokenizer = AutoTokenizer.from_pretrained(models.minilm_dir(), model_max_length=12)
    clip = CLIPTextModel(CLIPTextConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                        num_attention_heads=2, vocab_size=len(tokenizer),
                                        max_position_embeddings=16)).eval()
    t5 = T5EncoderModel(T5Config(d_model=32, d_ff=37, d_kv=8, num_layers=1, num_heads=2,
                                 vocab_size=t5_tokenizer.vocab_size)).eval()
    return diffusers.FluxPipeline(
        transformer=diffusers.FluxTransformer2DModel(**TINY_FLUX, guidance_embeds=guidance_embeds),
        vae=diffusers.AutoencoderKL(**TINY_VAE, shift_factor=0.1159, scaling_factor=0.3611),
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_image_seq_len=4,
                                                             max_image_seq_len=64),
        text_encoder=clip, tokenizer=tokenizer, text_encoder_2=t5, tokenizer_2=t5_tokenizer)


@pytest.fixture(scope="module")
def dev(tmp_path_factory):
    return make_flux_pipeline(tmp_path_factory.mktemp("tok"))


def assert_latents_close(got, ref):
    torch.testing.assert_close(got, ref, atol=TOL * max(1.0, ref.abs().max().item()), rtol=0)


def both(pipe, steps=4, guidance=3.5, seeds=(1, 2), size=16, engine=None, text_tokens=None):
    pipe.set_progress_bar_config(disable=True)
    tokens = {} if text_tokens is None else {"max_sequence_length": text_tokens}
    packed = pipe(PROMPTS, num_inference_steps=steps, guidance_scale=guidance, height=size, width=size,
                  output_type="latent", generator=[torch.Generator().manual_seed(s) for s in seeds], **tokens).images
    ref = flux.unpack(packed, size // pipe.vae_scale_factor, size // pipe.vae_scale_factor)
    engine = engine or Engine.from_pipeline(pipe, config=EngineConfig(mode="full", **tokens))
    got = engine.generate(PROMPTS, steps=steps, guidance_scale=guidance, seed=list(seeds), height=size, width=size,
                          output="latent")
    return got, ref


def test_pack_and_unpack_are_flux_pipelines():
    x = torch.randn(2, 4, 6, 8)
    packed = diffusers.FluxPipeline._pack_latents(x, 2, 4, 6, 8)
    assert torch.equal(flux.pack(x), packed)
    assert torch.equal(flux.unpack(packed, 6, 8), x)
    assert torch.equal(flux.image_ids(6, 8, "cpu", torch.float32),
                       diffusers.FluxPipeline._prepare_latent_image_ids(2, 3, 4, "cpu", torch.float32))


@pytest.mark.parametrize("size", [16, 32])
def test_flux_dev_matches_diffusers(dev, size):
    got, ref = both(dev, size=size)
    assert_latents_close(got, ref)


def test_flux_schnell_matches_diffusers(tmp_path):
    got, ref = both(make_flux_pipeline(tmp_path, guidance_embeds=False), guidance=0.0)
    assert_latents_close(got, ref)


def test_max_sequence_length_is_the_pipelines(dev):
    got, ref = both(dev, text_tokens=5)
    assert_latents_close(got, ref)
    with pytest.raises(ValueError, match="max_sequence_length must be >= 1 on Flux"):
        Engine.from_pipeline(dev, config=EngineConfig(mode="full", max_sequence_length=0))


def test_per_row_guidance_is_each_rows_own(dev):
    engine = Engine.from_pipeline(dev, config="full")
    kw = dict(steps=3, height=16, width=16, output="latent")
    batch = engine.generate(PROMPTS, guidance_scale=[2.0, 6.0], seed=[3, 4], **kw)
    for row, (prompt, g, s) in enumerate(zip(PROMPTS, [2.0, 6.0], [3, 4], strict=True)):
        assert_latents_close(batch[row], engine.generate(prompt, guidance_scale=g, seed=s, **kw))
    assert not torch.allclose(engine.generate(PROMPTS[0], guidance_scale=2.0, seed=3, **kw), batch[1], atol=1e-3)


def test_flux_directory_round_trip(dev, tmp_path):
    dev.save_pretrained(tmp_path / "flux", safe_serialization=True)
    engine = Engine.from_pretrained(str(tmp_path / "flux"), config="full", device="cpu")
    assert engine.runner.family.name == "flux" and not engine.uses_cfg(3.5)
    got, ref = both(dev, engine=engine)
    assert_latents_close(got, ref)


def test_flux_rows_batch_in_the_server(dev):
    from clockwork_engine import request

    alone = Engine.from_pipeline(dev, config="full")
    batched = alone.with_config(batching="step")
    reqs = [dict(prompt=p, steps=s, seed=k, height=16, width=16, output="latent", guidance_scale=g)
            for k, (p, s, g) in enumerate([("a red circle", 3, 3.5), ("a blue square", 4, 5.0)])]
    expected = [alone.generate(**r) for r in reqs]
    with batched.runner.lock:
        futures = [batched.batcher.submit(request.parse(batched, **r)) for r in reqs]
    for f, want in zip(futures, expected, strict=True):
        assert_latents_close(f.result(timeout=120), want)


def test_the_split_equals_the_flux_transformer(dev):
    """Double- and single-stream blocks alike, at cut 1 (the first and last block always run) and cut 0."""
    from clockwork_engine.clockwork.transformer_split import TransformerSplit

    g = torch.Generator().manual_seed(0)
    x, text = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 7, 32, generator=g)
    added = {"pooled_projections": torch.randn(2, 32, generator=g), "guidance": torch.tensor([3.5, 2.0])}
    t = torch.tensor([900.0, 400.0])
    with torch.no_grad():
        ref = Engine.from_pipeline(dev, config="full").runner.denoisers["full"](x, t, text, None, None, added)[0]
        for cut in (0, 1):
            split = TransformerSplit(dev.transformer, cut)
            out, r_out = split(x, t, text, None, added)
            torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
            assert r_out.shape == split.feature_shape(2, 7, 8, 8) == (2, 16 + 7, 32)


def test_clockwork_on_flux(dev):
    """The identity adaptor over the Flux split; with no adaptor step clockwork equals full mode."""
    kw = dict(steps=6, guidance_scale=3.5, seed=[1, 2], height=16, width=16, output="latent")
    full = Engine.from_pipeline(dev, config="full").generate(PROMPTS, **kw)
    engine = Engine.from_pipeline(dev, config=EngineConfig(mode="clockwork", adaptor="identity"))
    torch.testing.assert_close(engine.with_config(clock_every=0).generate(PROMPTS, **kw), full, atol=1e-5, rtol=1e-5)
    clocked = engine.generate(PROMPTS, **kw)
    assert torch.isfinite(clocked).all() and not torch.allclose(clocked, full, atol=1e-4)


def test_what_flux_refuses(dev):
    engine = Engine.from_pipeline(dev, config="full")
    with pytest.raises(ValueError, match="true CFG"):
        engine.generate("a red circle", negative_prompt="blurry", steps=2, height=16, width=16)
    with pytest.raises(ValueError, match=r"cut must be an int k with 0 <= k and 2k < 3"):
        Engine.from_pipeline(dev, config=EngineConfig(mode="clockwork", adaptor="identity", cut=2))
    with pytest.raises(ValueError, match="EulerDiscreteScheduler cannot sample a FluxPipeline model"):
        Engine.from_pipeline(dev, config=EngineConfig(mode="full", scheduler="euler"))
    with pytest.raises(ValueError, match="image-to-image and inpainting run on UNet models"):
        engine.generate("a red circle", image=torch.zeros(1, 3, 16, 16), steps=2)
    with pytest.raises(ValueError, match="height must be a multiple of 4"):
        engine.generate("a red circle", height=18, width=16, steps=2)
    no_t5 = copy.copy(dev)
    no_t5.text_encoder_2 = None
    with pytest.raises(ValueError, match="needs text_encoder_2"):
        Engine.from_pipeline(no_t5, config="full")
