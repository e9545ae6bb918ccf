"""Image-to-image and inpainting: parity with diffusers' StableDiffusionImg2ImgPipeline and
StableDiffusionInpaintPipeline (4-channel UNet: latent blending; 9-channel inpainting UNet),
the bad inputs, and clockwork on partial trajectories."""

import copy

import diffusers
import numpy as np
import pytest
import torch
from conftest import TINY_UNET, make_tiny_pipeline
from PIL import Image

from clockwork_engine import Engine, EngineConfig
from clockwork_engine.conditioning import images as edit_images
from clockwork_engine.conditioning import latents
from clockwork_engine.sampler import noise_schedulers

TOL = 1e-4
PROMPTS = ["a red circle", "a blue square"]


@pytest.fixture(scope="module")
def parts():
    return make_tiny_pipeline(seed=2).components


def pipeline(cls, parts, scheduler=None, inpainting_unet=False):
    parts = dict(parts)
    if inpainting_unet:
        torch.manual_seed(5)
        parts["unet"] = diffusers.UNet2DConditionModel(**{**TINY_UNET, "in_channels": 9})
    if scheduler is not None:
        parts["scheduler"] = noise_schedulers.from_name(scheduler, parts["scheduler"])
    pipe = cls(**parts)
    pipe.scheduler = copy.deepcopy(parts["scheduler"])
    pipe.set_progress_bar_config(disable=True)
    return pipe


def images(n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 16, 16, generator=g)


def masks(n=2):
    m = torch.zeros(n, 1, 16, 16)
    m[:, :, 4:12, 2:10] = 1.0
    return m


def run_both(pipe, prompts, steps, guidance, seeds, **edit):
    generator = [torch.Generator().manual_seed(s) for s in seeds]
    ref = pipe(prompts, num_inference_steps=steps, guidance_scale=guidance, generator=generator, output_type="latent",
               **edit).images
    kw = {"image": edit["image"], "strength": edit["strength"]}
    if "mask_image" in edit:
        kw["mask_image"] = edit["mask_image"]
    got = Engine.from_pipeline(pipe, config="full").generate(prompts, steps=steps, guidance_scale=guidance, seed=seeds,
                                                              output="latent", **kw)
    return got, ref


@pytest.mark.parametrize("guidance", [1.0, 4.0], ids=["no-cfg", "cfg"])
@pytest.mark.parametrize("strength", [0.3, 0.75, 1.0])
@pytest.mark.parametrize("scheduler", ["dpm++2m", "euler-a", "ddim", "heun", "unipc", "lcm", "pndm"])
def test_img2img_matches_diffusers(parts, scheduler, strength, guidance):
    pipe = pipeline(diffusers.StableDiffusionImg2ImgPipeline, parts, scheduler)
    got, ref = run_both(pipe, PROMPTS, 8, guidance, [3, 4], image=images(), strength=strength)
    torch.testing.assert_close(got, ref, atol=TOL, rtol=0)


@pytest.mark.parametrize("strength", [0.5, 1.0])
@pytest.mark.parametrize("scheduler", ["dpm++2m", "euler-a", "ddim", "heun", "dpm++2m-sde"])
@pytest.mark.parametrize("inpainting_unet", [False, True], ids=["4-channel", "9-channel"])
def test_inpaint_matches_diffusers(parts, scheduler, strength, inpainting_unet):
    pipe = pipeline(diffusers.StableDiffusionInpaintPipeline, parts, scheduler, inpainting_unet)
    got, ref = run_both(pipe, PROMPTS, 6, 4.0, [5, 6], image=images(), mask_image=masks(), strength=strength,
                        height=16, width=16)
    torch.testing.assert_close(got, ref, atol=TOL, rtol=0)


def test_pil_and_numpy_inputs_equal_tensors(parts):
    pipe = pipeline(diffusers.StableDiffusionInpaintPipeline, parts)
    engine = Engine.from_pipeline(pipe, config="full")
    img = (images(1)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    mask = (masks(1)[0, 0].numpy() * 255).astype(np.uint8)
    kw = dict(steps=3, seed=1, output="latent", strength=0.7, guidance_scale=7.5)
    from_pil = engine.generate("a red circle", image=Image.fromarray(img), mask_image=Image.fromarray(mask), **kw)
    from_np = engine.generate("a red circle", image=img, mask_image=mask, **kw)
    from_pt = engine.generate("a red circle", image=torch.from_numpy(img).permute(2, 0, 1).float() / 255,
                              mask_image=torch.from_numpy(mask)[None].float() / 255, **kw)
    torch.testing.assert_close(from_pil, from_np, atol=0, rtol=0)
    torch.testing.assert_close(from_pil, from_pt, atol=1e-6, rtol=0)
    ref = pipe("a red circle", image=Image.fromarray(img), mask_image=Image.fromarray(mask), num_inference_steps=3,
               strength=0.7, guidance_scale=7.5, generator=torch.Generator().manual_seed(1), output_type="latent",
               height=16, width=16).images[0]
    torch.testing.assert_close(from_pil, ref, atol=TOL, rtol=0)


def test_inpainting_keeps_the_image_outside_the_mask(parts):
    """4-channel inpainting's last blend puts the image latents back outside the mask."""
    engine = Engine.from_pipeline(pipeline(diffusers.StableDiffusionInpaintPipeline, parts), config="full")
    image, mask = images(1), masks(1)
    out = engine.generate("a red circle", image=image, mask_image=mask, steps=4, seed=0, output="latent")
    latent_mask = torch.nn.functional.interpolate(mask, size=(8, 8))[0]
    dist = engine.vae.encode(image * 2 - 1).latent_dist
    inside = (latent_mask == 1).expand_as(out)
    # Outside the mask: the image's posterior sample (its mean within a few std), not new content.
    assert ((out - dist.mean[0] * engine.vae.config.scaling_factor).abs()[~inside]).max() < \
        6 * float(dist.std.max()) * engine.vae.config.scaling_factor


@pytest.mark.parametrize("kwargs, match", [
    (dict(image="not an image"), "image must be a PIL image, a numpy array or a tensor"),
    (dict(image=torch.rand(1, 3, 12, 16)), "image is 16x12: each side must be a multiple of 8"),
    (dict(image=torch.rand(1, 4, 16, 16)), "image has 4 channels; expected 3"),
    (dict(image=torch.rand(1, 3, 16, 16) * 2), r"image values must lie in \[0, 1\]"),
    (dict(image=torch.full((1, 3, 16, 16), float("nan"))), "NaN"),
    (dict(image=torch.rand(3, 3, 16, 16)), "image has 3 images for 2 prompts"),
    (dict(image=torch.rand(1, 3, 16, 16), strength=0.0), r"strength must be a number in \(0, 1\]"),
    (dict(image=torch.rand(1, 3, 16, 16), strength=1.5), r"strength must be a number in \(0, 1\]"),
    (dict(image=torch.rand(1, 3, 16, 16), strength=0.05), "runs no step"),
    (dict(image=torch.rand(1, 3, 16, 16), height=24), "asks for another size"),
    (dict(strength=0.5), "strength applies to an edit"),
    (dict(mask_image=torch.ones(1, 1, 16, 16)), "mask_image needs an image"),
    (dict(image=torch.rand(1, 3, 16, 16), mask_image=torch.ones(1, 1, 8, 16)), "mask_image is 16x8, the image 16x16"),
    (dict(image=torch.rand(1, 3, 16, 16), mask_image=torch.rand(1, 3, 16, 16)), "must be single-channel"),
    (dict(image=torch.rand(1, 3, 16, 16), mask_image=torch.rand(1, 1, 16, 16)), "not binary-like"),
])
def test_bad_edit_input_is_a_clear_error(parts, kwargs, match):
    engine = Engine.from_pipeline(pipeline(diffusers.StableDiffusionImg2ImgPipeline, parts), config="full")
    with pytest.raises((ValueError, TypeError), match=match):
        engine.generate(PROMPTS, steps=8, seed=0, output="latent", **kwargs)
    # nothing left behind: the engine serves the next request as before
    assert engine.generate("a red circle", steps=2, seed=0, output="latent").shape == (4, 8, 8)


def test_inpainting_unet_needs_a_mask(parts):
    engine = Engine.from_pipeline(pipeline(diffusers.StableDiffusionInpaintPipeline, parts, inpainting_unet=True),
                                  config="full")
    with pytest.raises(ValueError, match="9-channel inpainting UNet: it needs a mask_image"):
        engine.generate("a red circle", image=images(1), steps=2)
    with pytest.raises(ValueError, match="it needs image= and mask_image="):
        engine.generate("a red circle", steps=2)


@pytest.mark.parametrize("scheduler", ["dpm++2m", "euler-a", "heun"])
def test_clockwork_on_partial_trajectories(parts, scheduler):
    """The clock runs over the evaluations the strength leaves, the first one full; with no
    adaptor step the clockwork path equals full mode on the edit."""
    pipe = pipeline(diffusers.StableDiffusionImg2ImgPipeline, parts, scheduler)
    engine = Engine.from_pipeline(pipe, config=EngineConfig(mode="clockwork", adaptor="identity"))
    edit = dict(image=images(1), strength=0.6, steps=8, seed=2, output="latent")
    start = latents.start_for(edit_images.edit_inputs(images(1), None, 0.6, 1, 8, 64, 4), 4)
    evals = engine.runner.table(8, start).num_steps
    assert evals < engine.runner.table(8).num_steps
    kinds = engine.step_kinds(8, "clockwork", start)
    assert kinds[0] == "clockwork.full" and kinds[1] == "clockwork.adaptor" and len(kinds) == evals
    full = engine.generate("a red circle", mode="full", **edit)
    torch.testing.assert_close(engine.with_config(clock_every=0).generate("a red circle", **edit), full,
                               atol=1e-5, rtol=1e-5)
    clocked = engine.generate("a red circle", **edit)
    assert torch.isfinite(clocked).all() and not torch.allclose(clocked, full, atol=1e-4)


def test_attention_reuse_on_an_edit(parts):
    """Reuse steps count the evaluations the edit runs; beyond them is a clear error."""
    pipe = pipeline(diffusers.StableDiffusionImg2ImgPipeline, parts)
    edit = dict(image=images(1), strength=0.5, steps=8, seed=2, output="latent")  # 4 of the 8 steps run
    plain = Engine.from_pipeline(pipe, config="full")
    reused = plain.with_config(attention_reuse=(3,))
    out, ref = reused.generate("a red circle", **edit), plain.generate("a red circle", **edit)
    assert torch.isfinite(out).all() and not torch.equal(out, ref)
    with pytest.raises(ValueError, match=r"attention reuse steps \[5\] are beyond the 4 steps"):
        plain.with_config(attention_reuse=(5,)).generate("a red circle", **edit)
