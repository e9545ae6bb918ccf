"""ControlNet in the engine's loop equal to StableDiffusionControlNetPipeline (latents within
1e-4, scaled): one ControlNet and two, conditioning scales, guess mode, a control window
(control_guidance_start / end), CFG on and off; what is refused by name."""

import diffusers
import pytest
import torch
from conftest import make_tiny_pipeline

from clockwork_engine import Engine, EngineConfig

PROMPTS = ["a red circle", "a blue square"]


def controlnet(unet, seed: int):
    torch.manual_seed(seed)
    net = diffusers.ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(4, 8))
    for p in net.parameters():  # from_unet zero-initialises the residual convs: give them weights
        if p.dim() > 1:
            torch.nn.init.normal_(p, std=0.05)
    return net.eval()


@pytest.fixture(scope="module")
def pipes():
    base = make_tiny_pipeline(seed=6)
    one = diffusers.StableDiffusionControlNetPipeline(**base.components, controlnet=controlnet(base.unet, 1))
    two = diffusers.StableDiffusionControlNetPipeline(
        **base.components, controlnet=diffusers.MultiControlNetModel([controlnet(base.unet, 1),
                                                                       controlnet(base.unet, 2)]))
    for p in (one, two):
        p.set_progress_bar_config(disable=True)
    return one, two


def images(n, seed):
    return [torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(seed + k)) for k in range(n)]


def both(pipe, control, guidance=5.0, engine=None, **kw):
    ref = pipe(PROMPTS, image=control, num_inference_steps=4, guidance_scale=guidance, height=16, width=16,
               output_type="latent", generator=[torch.Generator().manual_seed(s) for s in (1, 2)], **kw).images
    engine = engine or Engine.from_pipeline(pipe, config="full")
    names = dict(controlnet_conditioning_scale="controlnet_conditioning_scale", guess_mode="guess_mode",
                 control_guidance_start="control_guidance_start", control_guidance_end="control_guidance_end")
    got = engine.generate(PROMPTS, control_image=control, steps=4, guidance_scale=guidance, seed=[1, 2], height=16,
                          width=16, output="latent", **{names[k]: v for k, v in kw.items()})
    return got, ref


def close(got, ref):
    torch.testing.assert_close(got, ref, atol=1e-4 * max(1.0, ref.abs().max().item()), rtol=0)


@pytest.mark.parametrize("guidance", [1.0, 5.0], ids=["no-cfg", "cfg"])
@pytest.mark.parametrize("kw", [{}, {"controlnet_conditioning_scale": 0.6}, {"guess_mode": True},
                                {"control_guidance_start": 0.25, "control_guidance_end": 0.75}],
                         ids=["plain", "scale", "guess", "window"])
def test_one_controlnet_matches_diffusers(pipes, guidance, kw):
    got, ref = both(pipes[0], images(1, 0)[0], guidance, **kw)
    close(got, ref)


def test_two_controlnets_match_diffusers(pipes):
    got, ref = both(pipes[1], images(2, 3), controlnet_conditioning_scale=[0.8, 0.4],
                    control_guidance_start=[0.0, 0.5], control_guidance_end=[1.0, 1.0])
    close(got, ref)


def test_control_changes_the_image_and_what_is_refused(pipes):
    engine = Engine.from_pipeline(pipes[0], config="full")
    kw = dict(steps=3, seed=1, height=16, width=16, output="latent")
    plain = Engine.from_pipeline(diffusers.StableDiffusionPipeline(**{
        k: v for k, v in pipes[0].components.items() if k != "controlnet"}), config="full")
    assert not torch.allclose(engine.generate("a red circle", control_image=images(1, 0)[0], **kw),
                              plain.generate("a red circle", **kw), atol=1e-3)
    with pytest.raises(ValueError, match="control_image needs a ControlNet"):
        plain.generate("a red circle", control_image=images(1, 0)[0], **kw)
    with pytest.raises(ValueError, match="clockwork with a ControlNet runs at cut >= 1"):
        engine.with_config(mode="clockwork", adaptor="identity", cut=0).generate(
            "a red circle", control_image=images(1, 0)[0], **kw)
    with pytest.raises(ValueError, match="control_guidance_start 0.8 and _end 0.2"):
        engine.generate("a red circle", control_image=images(1, 0)[0], control_guidance_start=0.8,
                        control_guidance_end=0.2, **kw)
    with pytest.raises(ValueError, match="controlnet_conditioning_scale has 3 entries for 2 ControlNets"):
        Engine.from_pipeline(pipes[1], config="full").generate(
            "a red circle", control_image=images(2, 0), controlnet_conditioning_scale=[1.0, 1.0, 1.0], **kw)


@pytest.mark.parametrize("guess_mode", [False, True])
def test_an_sdxl_controlnet_matches_diffusers(tmp_path, guess_mode):
    from test_sdxl import make_sdxl_pipeline

    base = make_sdxl_pipeline(tmp_path / "tok")
    pipe = diffusers.StableDiffusionXLControlNetPipeline(**{k: v for k, v in base.components.items()
                                                             if k not in ("image_encoder", "feature_extractor")},
                                                          controlnet=controlnet(base.unet, 3))
    pipe.set_progress_bar_config(disable=True)
    got, ref = both(pipe, images(1, 5)[0], guess_mode=guess_mode)
    close(got, ref)


def test_a_controlnet_pipeline_directory_round_trip(pipes, tmp_path):
    pipes[0].save_pretrained(tmp_path / "cn", safe_serialization=True)
    engine = Engine.from_pretrained(str(tmp_path / "cn"), config="full", device="cpu")
    assert isinstance(engine.runner.controlnet, diffusers.ControlNetModel)
    got, ref = both(pipes[0], images(1, 0)[0], engine=engine)
    close(got, ref)


@pytest.mark.parametrize("guess_mode", [False, True])
def test_clockwork_with_a_controlnet(pipes, guess_mode):
    """With no adaptor step clockwork equals full mode with the ControlNet; on adaptor steps only
    the ControlNet's first level runs (the residuals of the skips H_out consumes), and the image
    still follows the control."""
    engine = Engine.from_pipeline(pipes[0], config=EngineConfig(mode="clockwork", adaptor="identity"))
    kw = dict(control_image=images(1, 0)[0], guess_mode=guess_mode, steps=6, seed=[1, 2], height=16, width=16,
              output="latent")
    full = engine.generate(PROMPTS, mode="full", **kw)
    torch.testing.assert_close(engine.with_config(clock_every=0).generate(PROMPTS, **kw), full, atol=1e-5, rtol=1e-5)
    clocked = engine.generate(PROMPTS, **kw)
    uncontrolled = engine.generate(PROMPTS, **{**kw, "controlnet_conditioning_scale": 0.0})
    assert torch.isfinite(clocked).all() and not torch.allclose(clocked, full, atol=1e-4)
    assert (clocked - full).abs().max() < (uncontrolled - full).abs().max()  # closer to full than no control
