"""The committed Flux-layout demo ("demo-flux", guidance-distilled from demo-sd3): it loads with
its settings, stock diffusers' FluxPipeline runs it and the engine matches it, it draws what it
is asked at its guidance scale, and its learned adaptor is ahead of the identity adaptor
(slow: seconds each)."""

import pytest
import torch

from clockwork_engine import Engine
from clockwork_engine.clockwork.adaptors import model_fingerprint
from clockwork_engine.datasets import shapes
from clockwork_engine.demo import flux
from clockwork_engine.eval import alignment
from clockwork_engine.eval import classifier as C
from clockwork_engine.eval.metrics import psnr
from clockwork_engine.models.flux_packing import unpack

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo():
    return Engine.from_pretrained("demo-flux", device="cpu")


def test_demo_flux_loads_with_its_settings_and_adaptor(demo):
    assert demo.runner.family.name == "flux" and demo.config.mode == "clockwork"
    meta = demo.adaptor_meta
    assert meta["adaptor"]["layout"] == "tokens" and meta["base_fingerprint"] == model_fingerprint(demo.runner.model)
    assert demo.config.max_sequence_length == flux.MAX_SEQUENCE_LENGTH
    assert demo.config.guidance_scale == flux.SETTINGS["guidance_scale"]
    assert demo.generate("a red circle above a blue square", seed=0).size == (64, 64)


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_stock_diffusers_runs_demo_flux_and_the_engine_matches_it(demo, guidance):
    pipe = flux.load()
    pipe.set_progress_bar_config(disable=True)
    prompts = ["a blue circle in the center", "a small red triangle at the top"]
    packed = pipe(prompts, num_inference_steps=8, guidance_scale=guidance, height=64, width=64,
                  max_sequence_length=flux.MAX_SEQUENCE_LENGTH,
                  generator=[torch.Generator().manual_seed(s) for s in (7, 8)], output_type="latent").images
    ref = unpack(packed, 16, 16)
    got = demo.generate(prompts, steps=8, guidance_scale=guidance, seed=[7, 8], mode="full", output="latent")
    torch.testing.assert_close(got, ref, atol=1e-4 * max(1.0, ref.abs().max().item()), rtol=0)


def test_demo_flux_draws_what_it_is_asked(demo):
    """A regression guard on held-out captions (the measured tables: docs/results/peers-sd3.md;
    63% of 100 there): colour and shape right in at least 40% of 32 single-shape prompts, full
    mode, 8 steps (its teacher, demo-sd3, draws 78%)."""
    model = C.load()
    scenes = [s for s in shapes.split_scenes("eval") if not s.is_pair][:32]
    images = torch.cat([demo.generate([s.caption for s in scenes[k : k + 16]], steps=8, seed=k, output="pt",
                                      mode="full") for k in (0, 16)])
    _, presence, geometry = alignment.read(model, images)
    right = [alignment.score(s, p, g, im)["colour_and_shape"] for s, p, g, im in zip(scenes, presence, geometry, images)]
    assert sum(right) / len(right) >= 0.4


def test_clockwork_on_demo_flux(demo):
    """With no adaptor step clockwork is full mode; on clock 2 the learned adaptor is closer to
    full mode than the identity adaptor (the stale middle output)."""
    prompts = [s.caption for s in shapes.split_scenes("eval")[:16]]
    full = demo.generate(prompts, steps=8, seed=3, output="pt", mode="full")
    torch.testing.assert_close(demo.with_config(clock_every=0).generate(prompts, steps=8, seed=3, output="pt"), full,
                               atol=1e-5, rtol=0)
    learned = demo.generate(prompts, steps=8, seed=3, output="pt")
    identity = demo.with_config(adaptor="identity").generate(prompts, steps=8, seed=3, output="pt")
    assert psnr(learned, full).mean() > psnr(identity, full).mean()


def test_train_flux_runs_and_saves_a_pipeline_the_engine_loads(tmp_path):
    from clockwork_engine.demo import train_flux

    train_flux.main(["--out", str(tmp_path / "run"), "--steps", "2", "--batch", "4", "--save-every", "2"])
    engine = Engine.from_pretrained(str(tmp_path / "run" / "final"), device="cpu")
    assert engine.config.max_sequence_length == flux.MAX_SEQUENCE_LENGTH and engine.runner.family.name == "flux"
    latents = engine.generate("a red circle", steps=2, seed=0, output="latent")
    assert latents.shape == (4, 16, 16) and torch.isfinite(latents).all()
