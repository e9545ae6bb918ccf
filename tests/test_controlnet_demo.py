"""The demo's mask ControlNet (demo/weights/controlnets/mask, trained by
demo/train_controlnet.py): loaded by name, at parity with diffusers' ControlNet pipeline, its
images follow the control mask; a ControlNet that does not fit is refused by name."""

import diffusers
import numpy as np
import pytest
import torch
from PIL import Image

from clockwork_engine import Engine
from clockwork_engine.datasets import shapes
from clockwork_engine.demo import pipeline
from clockwork_engine.eval.alignment import mask_iou
from clockwork_engine.models.errors import ModelLoadError

SCENES = [shapes.Scene("red", "circle"), shapes.Scene("blue", "square"), shapes.Scene("green", "triangle"),
          shapes.Scene("purple", "circle", relation="left of", colour2="yellow", shape2="square")]


@pytest.fixture(scope="module")
def engine():
    return Engine.from_pretrained("demo", device="cpu", controlnet="mask")


def masks(seed=3):
    rng = np.random.default_rng(seed)
    return [shapes.control_mask(shapes.layout(s, rng)) for s in SCENES]


def test_the_shipped_controlnet_matches_diffusers(engine):
    pipe = pipeline.load()
    ref_pipe = diffusers.StableDiffusionControlNetPipeline(**pipe.components, controlnet=engine.runner.controlnet)
    ref_pipe.set_progress_bar_config(disable=True)
    control, prompts = [Image.fromarray(m) for m in masks()[:2]], [s.caption for s in SCENES[:2]]
    ref = ref_pipe(prompts, image=control, num_inference_steps=4, guidance_scale=3.0, output_type="latent",
                   generator=[torch.Generator().manual_seed(s) for s in (1, 2)]).images
    got = engine.generate(prompts, control_image=control, steps=4, guidance_scale=3.0, seed=[1, 2], mode="full",
                          output="latent")
    torch.testing.assert_close(got, ref, atol=1e-4 * max(1.0, ref.abs().max().item()), rtol=0)


@pytest.mark.parametrize("mode", ["full", "clockwork"])
def test_images_follow_the_control_mask(engine, mode):
    """Drawn pixels overlap the mask far more than the caption alone places them (the bench:
    benches/bench_controlnet_demo.py, 150 held-out captions)."""
    ms = masks()
    kw = dict(steps=8, seed=0, output="pt", mode=mode)
    controlled = engine.generate([s.caption for s in SCENES], control_image=[Image.fromarray(m) for m in ms], **kw)
    free = engine.generate([s.caption for s in SCENES], controlnet_conditioning_scale=0.0,
                           control_image=[Image.fromarray(m) for m in ms], **kw)
    iou = [mask_iou(im, torch.from_numpy(m[..., 0] > 0)) for im, m in zip(controlled, ms)]
    free_iou = [mask_iou(im, torch.from_numpy(m[..., 0] > 0)) for im, m in zip(free, ms)]
    assert min(iou) > 0.6, iou
    assert sum(iou) / len(iou) > sum(free_iou) / len(free_iou) + 0.2, (iou, free_iou)


def test_a_controlnet_that_does_not_fit_is_refused(tiny_pipe):
    other = diffusers.ControlNetModel.from_unet(tiny_pipe.unet, conditioning_embedding_out_channels=(4, 8))
    with pytest.raises(ModelLoadError, match="block_out_channels"):
        Engine.from_pretrained("demo", device="cpu", controlnet=other)
    with pytest.raises(ModelLoadError, match="available: mask"):
        Engine.from_pretrained("demo", device="cpu", controlnet="no-such-controlnet")
    with pytest.raises(ValueError, match="ControlNets run on UNet models"):
        Engine.from_pretrained("demo-sd3", device="cpu", controlnet=other)


def test_a_corrupt_controlnet_folder_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    (tmp_path / "diffusion_pytorch_model.safetensors").write_bytes(b"junk")
    with pytest.raises(ModelLoadError, match="not a loadable ControlNetModel"):
        Engine.from_pretrained("demo", device="cpu", controlnet=str(tmp_path))
