"""FLOP counts per step type (meta tensors: nothing is computed)."""

import argparse

import pytest

from clockwork_engine.tools import flops


@pytest.fixture(scope="module")
def sd15():
    return flops.run(argparse.Namespace(arch="sd15", steps=8, clock=2, cut=1, json=None))


def test_sd15_matches_the_paper(sd15):
    paper = sd15["paper"]
    assert paper["unet_forward_batch1_gflops"] == pytest.approx(677.8, rel=0.01)  # Clockwork: 677.8
    assert paper["always_run_batch1_gflops"] == pytest.approx(228.4, rel=0.01)  # Clockwork: 228.4
    assert paper["baseline_tflops_per_image"] == pytest.approx(10.8, rel=0.01)
    assert paper["clockwork_tflops_per_image"] == pytest.approx(7.3, rel=0.02)
    assert 13e6 < sd15["adaptor_parameters"] < 15e6  # "about 14M"
    # The honest count includes the attention-score matmuls and saves less.
    assert sd15["full"]["unet_forward_batch1_gflops"] == pytest.approx(803.3, rel=0.01)
    assert sd15["full"]["saving"] < paper["saving"]


def test_schedule_arithmetic(sd15):
    for conv in ("paper", "full"):
        c = sd15[conv]
        assert c["clockwork_tflops_per_image"] == pytest.approx(4 * c["full_step_tflops"] + 4 * c["adaptor_step_tflops"])
        # an adaptor step = always-run part + adaptor, at CFG batch 2
        assert c["adaptor_step_tflops"] * 1e3 == pytest.approx(
            2 * (c["always_run_batch1_gflops"] + c["adaptor_batch1_gflops"]), rel=1e-6)
    assert sd15["adaptor_steps_0based"] == [1, 3, 5, 7]


def test_demo_arch_counts():
    demo = flops.run(argparse.Namespace(arch="demo", steps=8, clock=2, cut=1, json=None))
    assert 0 < demo["paper"]["saving"] < 1
    levels = demo["unet_forward_batch1_gflops_by_module"]
    assert sum(v["full"] for v in levels.values()) == pytest.approx(demo["full"]["unet_forward_batch1_gflops"],
                                                                   rel=1e-6)


def test_sdxl_arch_counts():
    """SDXL base at 1024x1024: the split costs what the UNet costs (asserted inside count_arch);
    the always-run part outside the 64x64 cut is under a tenth of a forward, so clock 2 at 8
    steps saves over 40% of the UNet FLOPs, the adaptor included."""
    from clockwork_engine.tools import flops

    r = flops.run(flops.build_parser(__import__("argparse").ArgumentParser()).parse_args(["--arch", "sdxl"]))
    full = r["full"]
    assert 6500 < full["unet_forward_batch1_gflops"] < 7000
    assert full["always_run_batch1_gflops"] / full["unet_forward_batch1_gflops"] < 0.1
    assert 0.4 < full["saving"] < 0.5 and r["adaptor_parameters"] > 0


def test_cut_0_runs_only_conv_in_and_the_last_layer():
    """At DeepCache's cut an adaptor step keeps under a tenth of SD v1.5's UNet (its last layer at 64x64)."""
    cut0 = flops.run(argparse.Namespace(arch="sd15", steps=8, clock=2, cut=0, json=None))
    assert cut0["cut"] == 0 and cut0["command"].endswith("--cut 0")
    full = cut0["full"]
    assert 0 < full["always_run_batch1_gflops"] < 0.1 * full["unet_forward_batch1_gflops"]
    assert full["clockwork_tflops_per_image"] < full["baseline_tflops_per_image"]


def test_sd35_medium_counts():
    """SD3.5 medium at 1024x1024 (4096 image + 333 text tokens): a forward is the linear layers
    of 24 joint blocks (13 with a second, image-only attention) plus joint attention over 4429
    tokens, 11.25 TFLOPs, as the hand count gives; an identity-adaptor step at cut 1 runs the
    first and last block and the embeddings, about a twelfth of that."""
    r = flops.run(argparse.Namespace(arch="sd3.5-medium", steps=28, clock=2, cut=1, json=None))
    full = r["full"]
    d, img, txt, blocks = 1536, 4096, 333, 24
    hand = blocks * 2 * 12 * d * d * (img + txt)  # q, k, v, out (4 D^2) and the 4x MLP (8 D^2), both streams
    hand += 13 * 2 * 4 * d * d * img + blocks * 4 * (img + txt) ** 2 * d + 13 * 4 * img ** 2 * d  # attentions
    assert full["model_forward_batch1_gflops"] == pytest.approx(hand / 1e9, rel=0.02)
    assert 0.07 < full["adaptor_step_fraction"] < 2 / blocks
    assert full["clockwork_tflops_per_image"] == pytest.approx(14 * full["full_step_tflops"] +
                                                               14 * full["adaptor_step_tflops"])


def test_flux_dev_counts():
    """Flux-dev at 1024x1024 (4096 image + 512 text tokens, no CFG): 19 double- and 38 single-stream
    blocks, each 12 D^2 of linear layers a token plus attention over 4608 tokens, 74.4 TFLOPs;
    an identity-adaptor step at cut 1 runs one block at each end, about a thirtieth."""
    r = flops.run(argparse.Namespace(arch="flux-dev", steps=28, clock=2, cut=1, json=None))
    full, d, tokens = r["full"], 3072, 4096 + 512
    hand = 57 * (2 * 12 * d * d * tokens + 4 * tokens ** 2 * d)
    assert r["cfg_batch"] == 1 and r["joint_blocks"] == 57 and r["text_tokens"] == 512
    assert full["model_forward_batch1_gflops"] == pytest.approx(hand / 1e9, rel=0.02)
    assert 0.03 < full["adaptor_step_fraction"] < 2 / 57 + 0.01
    assert full["learned_adaptor_step_fraction"] > full["adaptor_step_fraction"]  # its cost is counted
    assert 0.45 < full["learned_saving"] < full["saving"] < 0.5


def test_controlnet_beside_clockwork():
    """SD v1.5 + its ControlNet at 512x512: an adaptor step runs only the ControlNet's first level
    (its conv_in, conditioning embedding and first down block), so clock 2 still saves over a
    quarter of the FLOPs per image with the ControlNet counted."""
    r = flops.run(argparse.Namespace(arch="sd15", steps=8, clock=2, cut=1, json=None, controlnet=True))
    c = r["controlnet"]["full"]
    assert r["command"].endswith("--controlnet")
    assert 0 < c["controlnet_adaptor_step_tflops"] < 0.5 * c["controlnet_full_step_tflops"]
    assert c["baseline_tflops_per_image"] == pytest.approx(8 * (r["full"]["full_step_tflops"] +
                                                                 c["controlnet_full_step_tflops"]))
    assert 0.25 < c["saving"] < r["full"]["saving"]
