"""The tiny decoder: shapes, its folder (save, load, bad folders, the wrong VAE), distill-decoder
on the tiny pipeline (trains, resumes, the engine runs it), and the demo's committed one
against the demo VAE decoder."""

import json

import pytest
import torch

from clockwork_engine import Engine, EngineConfig
from clockwork_engine.clockwork.adaptors import model_fingerprint
from clockwork_engine.models import tiny_decoder as T
from clockwork_engine.tools import cli


@pytest.mark.parametrize("channels,blocks,size", [((8,), (1,), (3, 5)), ((8, 4), (1, 0), (7, 4)),
                                                  ((12, 6, 3), (2, 1, 1), (5, 9))])
def test_output_shape_for_odd_latent_sizes(channels, blocks, size):
    decoder = T.TinyDecoder(T.TinyDecoderConfig(4, channels, blocks))
    f = 2 ** (len(channels) - 1)
    assert decoder(torch.randn(2, 4, *size)).shape == (2, 3, size[0] * f, size[1] * f)


def test_config_rejects_mismatched_levels():
    with pytest.raises(ValueError, match="one entry per level"):
        T.TinyDecoderConfig(4, (8, 4), (1,))
    with pytest.raises(ValueError, match="bad tiny decoder config"):
        T.TinyDecoderConfig(4, (8, 0), (1, 1))


@pytest.fixture(scope="module")
def trained(tiny_dir, tmp_path_factory):
    """distill-decoder on the tiny pipeline's VAE (factor 2: two levels), 6 steps in two runs."""
    out = tmp_path_factory.mktemp("tiny_decoder") / "run"
    args = ["distill-decoder", "--model", str(tiny_dir), "--out", str(out), "--images", "64", "--sampled", "8", "--batch", "8",
            "--channels", "8,4", "--blocks", "1,0", "--save-every", "3"]
    assert cli.main([*args, "--steps", "3"]) == 0
    first = json.loads((out / "state.json").read_text())
    assert cli.main([*args, "--steps", "6"]) == 0
    return out, first


def test_distill_decoder_trains_resumes_and_the_engine_runs_it(tiny_dir, trained):
    out, first = trained
    state = json.loads((out / "state.json").read_text())
    assert first["step"] == 3 and state["step"] == 6 and state["losses"][:3] == first["losses"]  # resumed at 3
    meta = json.loads((out / "final" / "tiny_decoder_config.json").read_text())
    assert meta["decoder"] == {"latent_channels": 4, "channels": [8, 4], "blocks": [1, 0]}
    assert meta["training"]["steps"] == 6 and isinstance(meta["training"]["heldout_sampled_psnr_to_vae_db"], float)
    engine = Engine.from_pretrained(str(tiny_dir), config=EngineConfig(steps=2, decoder=str(out / "final")))
    assert engine.tiny_decoder is not None
    image = engine.generate(["a red circle"], seed=0, output="pt")
    assert image.shape == (1, 3, 16, 16) and torch.isfinite(image).all()
    # The image is the tiny decoder's: the same latents through it directly.
    latents = engine.generate(["a red circle"], seed=0, output="latent")
    with torch.no_grad():
        direct = (engine.tiny_decoder(latents / engine.vae.config.scaling_factor) / 2 + 0.5).clamp(0, 1)
    torch.testing.assert_close(image, direct, rtol=0, atol=1e-6)


def test_the_inductor_backend_compiles_the_tiny_decoder_to_the_same_images(tiny_dir, trained):
    out, _ = trained
    eager = Engine.from_pretrained(str(tiny_dir), config=EngineConfig(steps=1, decoder=str(out / "final")))
    compiled = eager.with_config(backend="inductor")
    a = eager.generate(["a red circle"], seed=0, output="pt")
    b = compiled.generate(["a red circle"], seed=0, output="pt")
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_bad_tiny_decoder_folders_raise_clear_errors(tiny_dir, trained, tmp_path):
    import shutil

    out, _ = trained
    good = out / "final"
    engine = Engine.from_pretrained(str(tiny_dir), config=EngineConfig(steps=2))
    with pytest.raises(ValueError, match="decoder 'tiny' needs a tiny decoder"):
        engine.with_config(decoder="tiny")  # the tiny pipeline's directory ships none
    with pytest.raises(T.TinyDecoderLoadError, match="not a tiny decoder folder"):
        engine.with_config(decoder=str(tmp_path))
    corrupt = tmp_path / "corrupt"
    shutil.copytree(good, corrupt)
    (corrupt / "tiny_decoder_config.json").write_text("{not json")
    with pytest.raises(T.TinyDecoderLoadError, match="corrupt"):
        engine.with_config(decoder=str(corrupt))
    wrong_vae = tmp_path / "wrong_vae"
    shutil.copytree(good, wrong_vae)
    meta = json.loads((good / "tiny_decoder_config.json").read_text())
    (wrong_vae / "tiny_decoder_config.json").write_text(json.dumps({**meta, "vae_fingerprint": "0123456789abcdef"}))
    with pytest.raises(T.TinyDecoderLoadError, match="distilled from VAE 0123456789abcdef"):
        engine.with_config(decoder=str(wrong_vae))
    truncated = tmp_path / "truncated"
    shutil.copytree(good, truncated)
    (truncated / "tiny_decoder.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(T.TinyDecoderLoadError, match="could not load"):
        engine.with_config(decoder=str(truncated))
    with pytest.raises(ValueError, match="decoder must be"):
        EngineConfig(decoder="")
    # The engine that refused nothing still works.
    assert torch.isfinite(engine.generate("a red circle", seed=0, output="pt")).all()


def test_demo_tiny_decoder_is_close_to_the_vae_decoder(demo_engine):
    """The committed tiny decoder, found for the teacher and a student, on sampled latents."""
    tiny = demo_engine.with_config(decoder="tiny")
    meta = json.loads(open(f"{demo_engine.decoder_dir}/tiny_decoder_config.json").read())
    assert meta["vae_fingerprint"] == model_fingerprint(demo_engine.vae)
    student = Engine.from_pretrained("demo", preset="progressive-2", config="full").with_config(decoder="tiny")
    assert student.decoder_dir == demo_engine.decoder_dir  # the teacher's, one folder up
    captions = ["a small red circle in the top left", "a big blue square", "a green triangle at the bottom"]
    for i, caption in enumerate(captions):
        latents = demo_engine.generate([caption], seed=i, steps=8, mode="full", output="latent")
        vae_image, tiny_image = demo_engine.decode(latents, "pt"), tiny.decode(latents, "pt")
        mse = (vae_image - tiny_image).pow(2).mean()
        assert 10 * torch.log10(1 / mse) > 25.0, caption  # dB; the bench reports the held-out mean
    assert student.generate(captions[0], seed=0, output="pt").shape == (3, 64, 64)
