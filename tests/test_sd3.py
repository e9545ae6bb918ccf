"""SD3 / SD3.5 in full mode equal to StableDiffusion3Pipeline (latents within 1e-4, scaled to
their magnitude) on a test-sized MMDiT: flow-match Euler with and without shift and with
dynamic shifting, CFG on and off, T5 present and absent, a negative prompt, a batch with
per-row seeds and guidance; a saved directory; the transformer's clockwork split; and what
the family refuses by name."""

import copy

import diffusers
import pytest
import torch
from conftest import TINY_VAE
from test_standard_dirs import clip_tokenizer
from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

from clockwork_engine import Engine, EngineConfig
from clockwork_engine.clockwork.transformer_split import TransformerSplit
from clockwork_engine.demo import models

TOL = 1e-4
PROMPTS = ["a red circle", "a blue square"]
# diffusers' own test-sized SD3 transformer (tests/pipelines/stable_diffusion_3), 4 joint blocks
TINY_SD3 = dict(sample_size=8, patch_size=2, in_channels=4, num_layers=4, attention_head_dim=8, num_attention_heads=2,
                joint_attention_dim=32, caption_projection_dim=16, pooled_projection_dim=24, out_channels=4,
                pos_embed_max_size=16)


def make_sd3_pipeline(tokenizer_dir, t5: bool = True, **scheduler_kw):
    """A StableDiffusion3Pipeline of random test-sized components (16x16 images, 8x8 latents):
    CLIP-L 8-d and CLIP-G 16-d (pooled 8 + 16), T5 32-d (the joint attention width)."""
    torch.manual_seed(0)
    tokenizer = clip_tokenizer(tokenizer_dir)

    def clip(width):
        return CLIPTextModelWithProjection(CLIPTextConfig(
            hidden_size=width, projection_dim=width, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2,
            vocab_size=len(tokenizer), max_position_embeddings=16, hidden_act="gelu")).eval()

    t5_parts = dict(text_encoder_3=None, tokenizer_3=None)
    if t5:  # a T5 encoder reading a WordPiece vocabulary: no SentencePiece model offline
        t5_tokenizer = AutoTokenizer.from_pretrained(models.minilm_dir(), model_max_length=12)
        t5_parts = dict(tokenizer_3=t5_tokenizer, text_encoder_3=T5EncoderModel(T5Config(
            d_model=32, d_ff=37, d_kv=8, num_layers=1, num_heads=2, vocab_size=t5_tokenizer.vocab_size)).eval())
    vae = diffusers.AutoencoderKL(**TINY_VAE, shift_factor=0.0609, scaling_factor=1.5035)
    return diffusers.StableDiffusion3Pipeline(
        transformer=diffusers.SD3Transformer2DModel(**TINY_SD3), vae=vae,
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(**{"shift": 3.0, **scheduler_kw}),
        text_encoder=clip(8), tokenizer=tokenizer, text_encoder_2=clip(16), tokenizer_2=tokenizer, **t5_parts)


@pytest.fixture(scope="module")
def sd3(tmp_path_factory):
    return make_sd3_pipeline(tmp_path_factory.mktemp("tok"))


def assert_latents_close(got, ref):
    torch.testing.assert_close(got, ref, atol=TOL * max(1.0, ref.abs().max().item()), rtol=0)


def both(pipe, steps=4, guidance=5.0, seeds=(1, 2), size=16, negative_prompt=None, engine=None, text_tokens=None):
    pipe.set_progress_bar_config(disable=True)
    tokens = {} if text_tokens is None else {"max_sequence_length": text_tokens}
    ref = pipe(PROMPTS, num_inference_steps=steps, guidance_scale=guidance, height=size, width=size,
               output_type="latent", negative_prompt=negative_prompt,
               generator=[torch.Generator().manual_seed(s) for s in seeds], **tokens).images
    engine = engine or Engine.from_pipeline(pipe, config=EngineConfig(mode="full", **tokens))
    got = engine.generate(PROMPTS, steps=steps, guidance_scale=guidance, seed=list(seeds), height=size, width=size,
                          output="latent", negative_prompt=negative_prompt)
    return got, ref


@pytest.mark.parametrize("guidance", [1.0, 5.0], ids=["no-cfg", "cfg"])
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_sd3_matches_diffusers(sd3, shift, guidance):
    pipe = copy.copy(sd3)
    pipe.scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift)
    got, ref = both(pipe, guidance=guidance)
    assert_latents_close(got, ref)


@pytest.mark.parametrize("size", [16, 32])
def test_dynamic_shifting_follows_the_image_size(sd3, size):
    """With use_dynamic_shifting the pipeline's mu follows the image's token count: each size
    gets its own solver table."""
    pipe = copy.copy(sd3)
    pipe.scheduler = diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_image_seq_len=16,
                                                               max_image_seq_len=64)
    got, ref = both(pipe, size=size)
    assert_latents_close(got, ref)


def test_sd3_without_t5_and_with_a_negative_prompt(tmp_path):
    """No text_encoder_3: the T5 tokens are zeros, as diffusers makes them."""
    pipe = make_sd3_pipeline(tmp_path, t5=False)
    got, ref = both(pipe, negative_prompt=["blurry", "a green triangle"])
    assert_latents_close(got, ref)


@pytest.mark.parametrize("t5", [True, False], ids=["t5", "no-t5"])
def test_max_sequence_length_is_the_pipelines(tmp_path, t5):
    """EngineConfig(max_sequence_length=n) is the pipeline's max_sequence_length: n T5 tokens,
    or n zero tokens without T5 (0: the CLIP tokens only, as the SD3 demo runs)."""
    pipe = make_sd3_pipeline(tmp_path, t5=t5)
    got, ref = both(pipe, text_tokens=5 if t5 else 0)
    assert_latents_close(got, ref)
    if t5:
        with pytest.raises(ValueError, match="max_sequence_length must be >= 1 where the model has a T5"):
            Engine.from_pipeline(pipe, config=EngineConfig(mode="full", max_sequence_length=0))


def test_per_row_guidance_is_each_rows_own(sd3):
    engine = Engine.from_pipeline(sd3, config="full")
    kw = dict(steps=3, height=16, width=16, output="latent")
    batch = engine.generate(PROMPTS, guidance_scale=[1.0, 6.0], seed=[3, 4], **kw)
    for row, (prompt, g, s) in enumerate(zip(PROMPTS, [1.0, 6.0], [3, 4], strict=True)):
        alone = engine.generate(prompt, guidance_scale=g, seed=s, **kw)
        assert_latents_close(batch[row], alone)


def test_sd3_directory_round_trip(sd3, tmp_path):
    sd3.save_pretrained(tmp_path / "sd3", safe_serialization=True)
    engine = Engine.from_pretrained(str(tmp_path / "sd3"), config="full", device="cpu")
    assert engine.runner.family.name == "sd3" and engine.runner.components["text_encoder_3"] is not None
    got, ref = both(sd3, engine=engine)
    assert_latents_close(got, ref)


def test_transformer_split_equals_the_transformer(sd3):
    model = sd3.transformer
    g = torch.Generator().manual_seed(0)
    x, text = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 7, 32, generator=g)
    added = {"pooled_projections": torch.randn(2, 24, generator=g)}
    t = torch.tensor([500.0, 250.0])
    with torch.no_grad():
        ref = model(hidden_states=x, timestep=t, encoder_hidden_states=text, return_dict=False,
                    pooled_projections=added["pooled_projections"])[0]
        for cut in (0, 1):  # cut 0: the whole stack is L (the last block returns no text stream)
            split = TransformerSplit(model, cut)
            out, r_out = split(x, t, text, None, added)
            torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
            assert r_out.shape == split.feature_shape(2, 7, 8, 8) == (2, 16 + 7, 16)


def test_clockwork_on_sd3(sd3):
    """The identity adaptor reuses the middle blocks' residual on clocked steps; with no
    adaptor step clockwork equals full mode."""
    kw = dict(steps=6, guidance_scale=5.0, seed=[1, 2], height=16, width=16, output="latent")
    full = Engine.from_pipeline(sd3, config="full").generate(PROMPTS, **kw)
    engine = Engine.from_pipeline(sd3, config=EngineConfig(mode="clockwork", adaptor="identity"))
    assert engine.step_kinds(6, "clockwork")[:2] == ["clockwork.full", "clockwork.adaptor"]
    torch.testing.assert_close(engine.with_config(clock_every=0).generate(PROMPTS, **kw), full, atol=1e-5, rtol=1e-5)
    clocked = engine.generate(PROMPTS, **kw)
    assert torch.isfinite(clocked).all() and not torch.allclose(clocked, full, atol=1e-4)
    # the adaptor steps run the first and last joint block only: the clocked output stays near full
    assert (clocked - full).abs().max() < full.abs().max()
    skipped = engine.with_config(cut=0).generate(PROMPTS, **kw)  # cut 0: no block runs on an adaptor step
    assert torch.isfinite(skipped).all() and not torch.allclose(skipped, clocked, atol=1e-4)
    assert (skipped - full).abs().max() < full.abs().max()


def test_distill_a_token_adaptor_for_sd3(sd3, tmp_path):
    """clockwork distill on an SD3 directory fits the token-wise adaptor on the transformer
    split; it is ahead of the identity adaptor on the held-out trajectories, the engine runs it,
    and a UNet's adaptor is refused on SD3 by its layout."""
    import json

    from clockwork_engine.clockwork import adaptors
    from clockwork_engine.tools import cli

    sd3.save_pretrained(tmp_path / "sd3", safe_serialization=True)
    out = tmp_path / "adaptor"  # fitted on the shapes world's captions, scored on its held-out ones
    assert cli.main(["distill", "--model", str(tmp_path / "sd3"), "--out", str(out), "--epochs", "3", "--steps", "4",
                     "--captions-per-epoch", "8", "--traj-batch", "4", "--batch", "8", "--hidden", "32",
                     "--guidance", "3.0", "--passes", "8", "--lr", "2e-3"]) == 0
    meta = adaptors.read_meta(str(out))
    assert meta["adaptor"]["layout"] == "tokens" and meta["cut"] == 1
    held_out = json.loads((out / "history.json").read_text())[-1]
    assert held_out["adaptor_guided"] < held_out["identity_guided"]  # the fitted adaptor beats reusing r_out
    engine = Engine.from_pretrained(str(tmp_path / "sd3"), config=EngineConfig(mode="clockwork", adaptor=str(out),
                                                                               steps=4), device="cpu")
    kw = dict(seed=0, height=16, width=16, output="latent", guidance_scale=3.0)
    clocked, full = engine.generate("a red circle", **kw), engine.generate("a red circle", mode="full", **kw)
    identity = engine.with_config(adaptor="identity").generate("a red circle", **kw)
    assert torch.isfinite(clocked).all() and not torch.equal(clocked, full) and not torch.equal(clocked, identity)
    conv = adaptors.AdaptorConfig(**{**meta["adaptor"], "groups": 4, "layout": "conv"})  # a UNet's kind
    adaptors.save(str(tmp_path / "conv"), adaptors.build(conv), cut=1, base_fingerprint=meta["base_fingerprint"],
                  scheduler=meta["scheduler"], steps=4, clock=meta["clock"])
    with pytest.raises(ValueError, match="fitted on a conv split; this model's split is tokens"):
        engine.with_config(adaptor=str(tmp_path / "conv"))


def test_distill_on_the_output_at_cut_0(sd3, tmp_path, capsys):
    """At cut 0 an adaptor step runs no block, and distill can fit phi on the velocity tokens its
    r_out gives (through the final norm and projection); it is ahead of the identity adaptor
    there, and the loss is refused where the output does not follow from r_out alone (cut 1)."""
    import json

    from clockwork_engine.clockwork import adaptors
    from clockwork_engine.tools import cli

    sd3.save_pretrained(tmp_path / "sd3", safe_serialization=True)
    out, model = tmp_path / "adaptor", str(tmp_path / "sd3")
    args = ["distill", "--model", model, "--epochs", "3", "--steps", "4", "--captions-per-epoch", "8",
            "--traj-batch", "4", "--batch", "8", "--hidden", "32", "--guidance", "3.0", "--passes", "8", "--lr", "2e-3",
            "--loss-on", "output"]
    assert cli.main([*args, "--out", str(out), "--cut", "0"]) == 0
    meta = adaptors.read_meta(str(out))
    assert meta["cut"] == 0 and meta["training"]["loss_on"] == "output"
    held_out = json.loads((out / "history.json").read_text())[-1]
    assert held_out["adaptor_output"] < held_out["identity_output"]
    assert cli.main([*args, "--out", str(tmp_path / "cut1"), "--cut", "1"]) == 2
    assert "--loss-on output needs a transformer split at cut 0" in capsys.readouterr().err


def test_fit_on_the_images_of_random_clocks(sd3, tmp_path):
    """--loss-on image: with no adaptor step the fit's sampler gives the engine's full-mode image;
    phi starts as the identity, the loss moves it, and the held-out PSNR of both is reported."""
    import argparse
    import json

    import numpy as np

    from clockwork_engine.clockwork import adaptors
    from clockwork_engine.distill import fit_images
    from clockwork_engine.tools import cli

    engine = Engine.from_pipeline(sd3, config=EngineConfig(mode="full"))
    split = engine.runner.family.split(engine.model, 0)
    phi = adaptors.build(adaptors.AdaptorConfig.for_split(split, 16))
    got = fit_images.images(engine, split, phi, ["a red circle"], 4, 5.0, [False] * 4, seed=3)
    want = engine.generate(["a red circle"], steps=4, guidance_scale=5.0, seed=3, output="pt")
    torch.testing.assert_close(got.clamp(0, 1), want, atol=1e-5, rtol=0)
    clocks = [fit_images.random_clock(np.random.default_rng(k), 12) for k in range(20)]
    assert all(not c[0] and any(c) for c in clocks) and len({tuple(c) for c in clocks}) > 10

    sd3.save_pretrained(tmp_path / "sd3", safe_serialization=True)
    out = tmp_path / "adaptor"
    assert cli.main(["distill", "--model", str(tmp_path / "sd3"), "--out", str(out), "--cut", "0", "--steps", "4",
                     "--epochs", "2", "--captions-per-epoch", "4", "--image-batch", "2", "--passes", "2",
                     "--hidden", "16", "--guidance", "3.0", "--loss-on", "image"]) == 0
    meta = adaptors.read_meta(str(out))
    assert meta["training"]["loss_on"] == "image" and meta["training"]["image_batch"] == 2
    fitted, _ = adaptors.load(str(out))
    assert fitted.proj_out.weight.abs().sum() > 0  # moved from the identity it started as
    held_out = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in held_out] == [1, 2]
    args = argparse.Namespace(seed=0, steps=4, guidance=3.0)
    report = fit_images.held_out_psnr(engine, split, phi, phi, args)  # phi is the identity: both report alike
    assert set(report) == {"adaptor_psnr_c2", "identity_psnr_c2", "adaptor_psnr_c3", "identity_psnr_c3"}
    assert report["adaptor_psnr_c2"] == report["identity_psnr_c2"] and np.isfinite(report["adaptor_psnr_c2"])


def test_what_sd3_refuses(sd3, tmp_path):
    with pytest.raises(ValueError, match="EulerDiscreteScheduler cannot sample a StableDiffusion3Pipeline model"):
        Engine.from_pipeline(sd3, config=EngineConfig(mode="full", scheduler="euler"))
    with pytest.raises(ValueError, match="attention reuse runs on UNet models"):
        Engine.from_pipeline(sd3, config=EngineConfig(mode="full", attention_reuse=(2,)))
    with pytest.raises(ValueError, match=r"cut must be an int k with 0 <= k and 2k < 4"):
        Engine.from_pipeline(sd3, config=EngineConfig(mode="clockwork", adaptor="identity", cut=2))
    engine = Engine.from_pipeline(sd3, config="full")
    with pytest.raises(ValueError, match="image-to-image and inpainting run on UNet models"):
        engine.generate("a red circle", image=torch.zeros(1, 3, 16, 16), steps=2)
    with pytest.raises(ValueError, match="height must be a multiple of 4 .* the transformer's patch"):
        engine.generate("a red circle", height=18, width=16, steps=2)
    no_clip_g = copy.copy(sd3)
    no_clip_g.text_encoder_2 = None
    with pytest.raises(ValueError, match="needs text_encoder_2"):
        Engine.from_pipeline(no_clip_g, config="full")


def test_a_unet_refuses_a_flow_matching_scheduler_and_t5_tokens(tiny_pipe):
    with pytest.raises(ValueError, match="max_sequence_length sets SD3's and Flux's T5 tokens"):
        Engine.from_pipeline(tiny_pipe, config=EngineConfig(mode="full", max_sequence_length=8))
    with pytest.raises(ValueError, match=r"max_sequence_length must be an int in \[0, 512\]"):
        EngineConfig(max_sequence_length=513)
    pipe = copy.copy(tiny_pipe)
    pipe.scheduler = diffusers.FlowMatchEulerDiscreteScheduler()
    with pytest.raises(ValueError, match="FlowMatchEulerDiscreteScheduler cannot sample a StableDiffusionPipeline"):
        Engine.from_pipeline(pipe, config="full")
