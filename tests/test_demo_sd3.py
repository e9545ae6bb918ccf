"""The committed SD3-layout demo ("demo-sd3"): it loads with its settings, stock diffusers runs
it and the engine matches it, it draws what it is asked, and its learned adaptor is ahead of
the identity adaptor (slow: seconds each)."""

import pytest
import torch

from clockwork_engine import Engine
from clockwork_engine.clockwork.adaptors import model_fingerprint
from clockwork_engine.datasets import shapes
from clockwork_engine.demo import sd3
from clockwork_engine.eval import alignment
from clockwork_engine.eval import classifier as C
from clockwork_engine.eval.metrics import psnr

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo():
    return Engine.from_pretrained("demo-sd3", device="cpu")


def test_demo_sd3_loads_with_its_settings_and_adaptor(demo):
    assert demo.runner.family.name == "sd3" and demo.config.mode == "clockwork"
    assert demo.config.max_sequence_length == 0 and demo.config.guidance_scale == sd3.SETTINGS["guidance_scale"]
    meta = demo.adaptor_meta
    assert meta["adaptor"]["layout"] == "tokens" and meta["steps"] == demo.config.steps
    assert meta["base_fingerprint"] == model_fingerprint(demo.runner.model)
    image = demo.generate("a red circle above a blue square", seed=0)
    assert image.size == (64, 64)


def test_stock_diffusers_runs_demo_sd3_and_the_engine_matches_it(demo):
    pipe = sd3.load()
    pipe.set_progress_bar_config(disable=True)
    prompts = ["a blue circle in the center", "a small red triangle at the top"]
    ref = pipe(prompts, num_inference_steps=8, guidance_scale=3.0, height=64, width=64, max_sequence_length=0,
               generator=[torch.Generator().manual_seed(s) for s in (7, 8)], output_type="latent").images
    got = demo.generate(prompts, steps=8, guidance_scale=3.0, seed=[7, 8], mode="full", output="latent")
    torch.testing.assert_close(got, ref, atol=1e-4 * max(1.0, ref.abs().max().item()), rtol=0)


def test_every_caption_word_is_one_token():
    tokenizer = Engine.from_pretrained("demo-sd3", config="full", device="cpu").runner.components["tokenizer"]
    for scene in shapes.all_scenes()[::50]:
        ids = tokenizer(scene.caption).input_ids
        assert len(ids) == len(scene.caption.split()) + 2  # BOS, one per word, EOS


def test_demo_sd3_draws_what_it_is_asked(demo):
    """A regression guard on held-out captions (the measured table: docs/results/peers.md):
    colour and shape right in at least 60% of 32 single-shape prompts, full mode, 20 steps."""
    model = C.load()
    scenes = [s for s in shapes.split_scenes("eval") if not s.is_pair][:32]
    images = torch.cat([demo.generate([s.caption for s in scenes[k : k + 16]], steps=20, seed=k, output="pt",
                                      mode="full") for k in (0, 16)])
    _, presence, geometry = alignment.read(model, images)
    right = [alignment.score(s, p, g, im)["colour_and_shape"] for s, p, g, im in zip(scenes, presence, geometry, images)]
    assert sum(right) / len(right) >= 0.6


def test_learned_adaptor_is_closer_to_full_than_identity(demo):
    prompts = [s.caption for s in shapes.split_scenes("eval")[:16]]
    full = demo.generate(prompts, seed=3, output="pt", mode="full")
    learned = demo.generate(prompts, seed=3, output="pt")
    identity = demo.with_config(adaptor="identity").generate(prompts, seed=3, output="pt")
    assert psnr(learned, full).mean() > psnr(identity, full).mean()


@pytest.mark.parametrize("steps", [20, 28])
def test_the_adaptors_fitted_at_cut_0_for_20_and_28_steps(demo, steps):
    """At 20 and 28 steps the engine picks the adaptor fitted for the step count: at cut 0 (an
    adaptor step runs no block), on the images of random clocks (--loss-on image), its held-out
    PSNR to the full model on clock 3 above the identity adaptor's; on two steps of every three it
    stays near full mode and is not the identity adaptor's image."""
    meta = demo.operating_point(steps).meta
    assert meta["cut"] == 0 and meta["steps"] == steps and meta["training"]["loss_on"] == "image"
    held_out = meta["training"]["held_out"][-1]
    assert held_out["adaptor_psnr_c3"] > held_out["identity_psnr_c3"]
    prompts = [s.caption for s in shapes.split_scenes("eval")[:16]]
    kw = dict(steps=steps, seed=3, output="pt")
    full = demo.generate(prompts, mode="full", **kw)
    dense = tuple(i for i in range(steps) if i % 3)
    learned = demo.with_config(adaptor_steps=dense).generate(prompts, **kw)
    identity = demo.with_config(adaptor="identity", cut=0, adaptor_steps=dense).generate(prompts, **kw)
    assert psnr(learned, full).mean() > 25 and not torch.equal(learned, identity)


def test_the_adaptor_step_cost_is_the_step_counts_operating_points(demo):
    """clockwork search-clock's cost of an adaptor step: at 8 steps the adaptor fitted at cut 1
    (the first and last joint block run), at 28 the one fitted at cut 0 (no block runs)."""
    from clockwork_engine.clockwork.clock_search import adaptor_step_cost

    at_cut_1, at_cut_0 = adaptor_step_cost(demo, 8, 3.0), adaptor_step_cost(demo, 28, 3.0)
    assert 0 < at_cut_0 < 0.5 * at_cut_1 and at_cut_1 < 0.6


def test_train_sd3_runs_and_saves_a_pipeline_the_engine_loads(tmp_path):
    from clockwork_engine.demo import train_sd3

    train_sd3.main(["--out", str(tmp_path / "run"), "--steps", "2", "--batch", "4", "--save-every", "2"])
    engine = Engine.from_pretrained(str(tmp_path / "run" / "final"), device="cpu")
    assert engine.config.max_sequence_length == 0 and engine.config.mode == "full"
    latents = engine.generate("a red circle", steps=2, seed=0, output="latent")
    assert latents.shape == (4, 16, 16) and torch.isfinite(latents).all()
