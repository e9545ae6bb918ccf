"""SDXL in full mode: both text encoders, the pooled embedding, the time ids and
force_zeros_for_empty_prompt, equal to StableDiffusionXLPipeline (latents within 1e-4) on a
test-sized SDXL config, image-to-image and inpainting equal to StableDiffusionXLImg2ImgPipeline
and StableDiffusionXLInpaintPipeline; CFG rescale (guidance_rescale) for SD and SDXL alike."""

import copy

import diffusers
import pytest
import torch
from conftest import TINY_VAE, make_tiny_pipeline
from test_standard_dirs import clip_tokenizer
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from clockwork_engine import Engine, EngineConfig
from clockwork_engine.sampler import noise_schedulers

# diffusers' own test-sized SDXL UNet (tests/pipelines/stable_diffusion_xl), at 8x8 latents
TINY_SDXL_UNET = dict(
    block_out_channels=(8, 16), layers_per_block=2, sample_size=8, in_channels=4, out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
    addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
    projection_class_embeddings_input_dim=6 * 8 + 32, cross_attention_dim=64, norm_num_groups=4,
)
PROMPTS = ["a red circle", "a blue square"]


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    return make_sdxl_pipeline(tmp_path_factory.mktemp("tok"))


def make_sdxl_pipeline(tokenizer_dir):
    """A StableDiffusionXLPipeline of random test-sized components (16x16 images)."""
    torch.manual_seed(0)
    tokenizer = clip_tokenizer(tokenizer_dir)
    cfg = CLIPTextConfig(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=3,
                         vocab_size=len(tokenizer), max_position_embeddings=16, projection_dim=32, hidden_act="gelu")
    return diffusers.StableDiffusionXLPipeline(
        vae=diffusers.AutoencoderKL(**TINY_VAE), text_encoder=CLIPTextModel(cfg).eval(),
        text_encoder_2=CLIPTextModelWithProjection(cfg).eval(), tokenizer=tokenizer, tokenizer_2=tokenizer,
        unet=diffusers.UNet2DConditionModel(**TINY_SDXL_UNET),
        scheduler=diffusers.EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                                   timestep_spacing="leading", steps_offset=1),
        force_zeros_for_empty_prompt=True)


def both(pipe, steps=5, guidance=5.0, seeds=(1, 2), engine_config=None, **kw):
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(PROMPTS, num_inference_steps=steps, guidance_scale=guidance, height=16, width=16, output_type="latent",
               generator=[torch.Generator().manual_seed(s) for s in seeds], **kw).images
    engine = Engine.from_pipeline(pipe, config=engine_config or "full")
    got = engine.generate(PROMPTS, steps=steps, guidance_scale=guidance, seed=list(seeds), height=16, width=16,
                          output="latent", negative_prompt=kw.get("negative_prompt"))
    return got, ref


@pytest.mark.parametrize("guidance", [1.0, 5.0], ids=["no-cfg", "cfg"])
@pytest.mark.parametrize("scheduler", ["euler", "dpm++2m", "euler-a", "unipc"])
def test_sdxl_matches_diffusers(sdxl, scheduler, guidance):
    pipe = copy.copy(sdxl)
    pipe.scheduler = noise_schedulers.from_name(scheduler, sdxl.scheduler)
    got, ref = both(pipe, guidance=guidance)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("force_zeros", [True, False])
def test_sdxl_negative_prompts_and_zeroed_empty_ones(sdxl, force_zeros):
    pipe = copy.copy(sdxl)
    pipe.register_to_config(force_zeros_for_empty_prompt=force_zeros)
    got, ref = both(pipe)  # no negative prompt: zeros, or the encoded ""
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)
    got, ref = both(pipe, negative_prompt=["a green triangle", "a purple circle"])
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)


def test_guidance_rescale_matches_diffusers(sdxl):
    got, ref = both(copy.copy(sdxl), guidance_rescale=0.7, engine_config=EngineConfig(guidance_rescale=0.7))
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)
    sd = make_tiny_pipeline(seed=1)
    got, ref = both(sd, guidance_rescale=0.7, engine_config=EngineConfig(guidance_rescale=0.7))
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)


def test_sdxl_directory_round_trip(sdxl, tmp_path):
    sdxl.save_pretrained(tmp_path / "sdxl")
    engine = Engine.from_pretrained(str(tmp_path / "sdxl"), config="full")
    assert engine.conditioning.sdxl and engine.components["text_encoder_2"] is not None
    pipe = diffusers.StableDiffusionXLPipeline.from_pretrained(tmp_path / "sdxl")
    got, ref = both(pipe)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)


def test_sdxl_split_equals_the_unet(sdxl):
    from clockwork_engine.clockwork.unet_split import UNetSplit

    split = UNetSplit(sdxl.unet, cut=1)
    g = torch.Generator().manual_seed(0)
    x, text = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 16, 64, generator=g)
    added = {"text_embeds": torch.randn(2, 32, generator=g), "time_ids": torch.tensor([[16.0, 16, 0, 0, 16, 16]] * 2)}
    ref = sdxl.unet(x, torch.tensor(500), encoder_hidden_states=text, added_cond_kwargs=added).sample
    torch.testing.assert_close(split(x, torch.tensor(500), text, None, added)[0], ref, atol=1e-5, rtol=1e-5)


def test_clockwork_on_sdxl(sdxl):
    """The identity adaptor on SDXL: no adaptor step equals full mode; the clock changes the result."""
    engine = Engine.from_pipeline(sdxl, config="clockwork-identity")
    kw = dict(steps=6, seed=3, height=16, width=16, output="latent", guidance_scale=5.0)
    full = engine.generate("a red circle", mode="full", **kw)
    torch.testing.assert_close(engine.with_config(clock_every=0).generate("a red circle", **kw), full,
                               atol=1e-5, rtol=1e-5)
    clocked = engine.generate("a red circle", **kw)
    assert torch.isfinite(clocked).all() and not torch.allclose(clocked, full, atol=1e-4)


def test_distill_an_adaptor_for_sdxl(sdxl, tmp_path):
    """clockwork distill on an SDXL directory (its own captions); the engine runs the adaptor."""
    from clockwork_engine.tools import cli

    sdxl.save_pretrained(tmp_path / "sdxl")
    (tmp_path / "captions.txt").write_text("a red circle\na blue square\na green triangle\na purple circle\n")
    out = tmp_path / "adaptor"
    assert cli.main(["distill", "--model", str(tmp_path / "sdxl"), "--out", str(out), "--prompts",
                     str(tmp_path / "captions.txt"), "--epochs", "1", "--steps", "4", "--captions-per-epoch", "8",
                     "--traj-batch", "4", "--batch", "8", "--hidden", "16", "--guidance", "3.0",
                     "--mode", "rollout", "--pooled-text"]) == 0
    engine = Engine.from_pretrained(str(tmp_path / "sdxl"), config=EngineConfig(mode="clockwork", adaptor=str(out),
                                                                                steps=4))
    out_clock = engine.generate("a red circle", seed=0, height=16, width=16, output="latent", guidance_scale=3.0)
    out_full = engine.generate("a red circle", seed=0, height=16, width=16, output="latent", guidance_scale=3.0,
                               mode="full")
    assert torch.isfinite(out_clock).all() and not torch.equal(out_clock, out_full)


def edit_pipeline(cls, sdxl, scheduler, in_channels=4):
    parts = dict(sdxl.components)
    if in_channels != 4:  # an SDXL inpainting UNet (latents, mask, masked-image latents)
        torch.manual_seed(5)
        parts["unet"] = diffusers.UNet2DConditionModel(**{**TINY_SDXL_UNET, "in_channels": in_channels})
    pipe = cls(**parts, force_zeros_for_empty_prompt=True)
    pipe.scheduler = noise_schedulers.from_name(scheduler, sdxl.scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def both_edit(pipe, guidance, **edit):
    ref = pipe(PROMPTS, num_inference_steps=6, guidance_scale=guidance, output_type="latent",
               generator=[torch.Generator().manual_seed(s) for s in (1, 2)], **edit).images
    got = Engine.from_pipeline(pipe, config="full").generate(PROMPTS, steps=6, guidance_scale=guidance, seed=[1, 2],
                                                              output="latent", **edit)
    return got, ref


EDIT_IMAGES = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
EDIT_MASKS = torch.zeros(2, 1, 16, 16)
EDIT_MASKS[:, :, 4:12, 2:10] = 1.0


@pytest.mark.parametrize("guidance", [1.0, 5.0], ids=["no-cfg", "cfg"])
@pytest.mark.parametrize("strength", [0.5, 1.0])
@pytest.mark.parametrize("scheduler", ["euler", "dpm++2m", "euler-a"])
def test_sdxl_img2img_matches_diffusers(sdxl, scheduler, strength, guidance):
    pipe = edit_pipeline(diffusers.StableDiffusionXLImg2ImgPipeline, sdxl, scheduler)
    got, ref = both_edit(pipe, guidance, image=EDIT_IMAGES, strength=strength)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("strength", [0.5, 1.0])
@pytest.mark.parametrize("scheduler", ["euler", "dpm++2m"])
@pytest.mark.parametrize("in_channels", [4, 9], ids=["4-channel", "9-channel"])
def test_sdxl_inpaint_matches_diffusers(sdxl, scheduler, strength, in_channels):
    pipe = edit_pipeline(diffusers.StableDiffusionXLInpaintPipeline, sdxl, scheduler, in_channels)
    got, ref = both_edit(pipe, 5.0, image=EDIT_IMAGES, mask_image=EDIT_MASKS, strength=strength)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)


def test_sdxl_needs_its_second_text_encoder(sdxl):
    parts = dict(sdxl.components)
    with pytest.raises(ValueError, match="needs tokenizer_2 and text_encoder_2"):
        Engine(parts["unet"], parts["vae"], parts["tokenizer"], parts["text_encoder"], parts["scheduler"])


def test_attention_reuse_on_sdxl(sdxl):
    engine = Engine.from_pipeline(sdxl, config="full")
    kw = dict(steps=6, seed=3, height=16, width=16, output="latent", guidance_scale=5.0)
    reused = engine.with_config(attention_reuse=(4, 5)).generate("a red circle", **kw)
    assert torch.isfinite(reused).all() and not torch.equal(reused, engine.generate("a red circle", **kw))
