"""The clockwork command line."""

import pytest
from PIL import Image

from clockwork_engine.tools import cli


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["generate", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for option in ("--output", "--steps", "--seed", "--guidance", "--mode", "--height", "--width", "--model",
                   "--preset", "--decoder", "--scheduler", "--eta"):
        assert option in text
    assert "classifier-free guidance" in text


def test_generate_writes_a_png(tiny_dir, tmp_path, capsys):
    out = tmp_path / "img.png"
    code = cli.main(["generate", "a red circle", "-o", str(out), "--model", str(tiny_dir), "--steps", "3",
                     "--height", "16", "--width", "16", "--seed", "1"])
    assert code == 0
    assert Image.open(out).size == (16, 16)
    assert "wrote" in capsys.readouterr().out


def test_generate_with_a_named_scheduler(tiny_dir, tmp_path, capsys):
    out = tmp_path / "heun.png"
    assert cli.main(["generate", "a red circle", "-o", str(out), "--model", str(tiny_dir), "--steps", "3",
                     "--height", "16", "--width", "16", "--scheduler", "heun"]) == 0
    assert Image.open(out).size == (16, 16)
    assert cli.main(["generate", "a red circle", "--model", str(tiny_dir), "--scheduler", "eulr"]) == 2
    err = capsys.readouterr().err
    assert "unknown scheduler 'eulr'" in err and "euler-a" in err and "dpm++2m-karras" in err


def test_bad_input_is_a_clean_error(tiny_dir, tmp_path, capsys):
    code = cli.main(["generate", "a red circle", "-o", str(tmp_path / "x.png"), "--model", str(tiny_dir),
                     "--steps", "0"])
    assert code == 2
    assert "steps must be a positive int, got 0" in capsys.readouterr().err
    assert cli.main(["generate", "x", "--model", "/missing/dir"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli.main(["generate", "x", "--model", str(tiny_dir), "--height", "0"]) == 2
    assert "height must be in" in capsys.readouterr().err


def test_generate_runs_a_shipped_student(tmp_path, capsys):
    """--preset picks a demo student and its settings (progressive-2: 2 steps on its own grid)."""
    out = tmp_path / "p2.png"
    assert cli.main(["generate", "a red circle above a blue square", "-o", str(out), "--preset", "progressive-2"]) == 0
    assert Image.open(out).size == (64, 64)
    assert cli.main(["generate", "x", "--preset", "nope"]) == 2
    assert "unknown preset 'nope'" in capsys.readouterr().err


def test_generate_with_the_tiny_decoder(tiny_dir, tmp_path, capsys):
    """--decoder tiny: the demo's tiny decoder (found for a student too); a model without one is a clean error."""
    out = tmp_path / "tiny.png"
    assert cli.main(["generate", "a red circle", "-o", str(out), "--preset", "progressive-2", "--decoder", "tiny"]) == 0
    assert Image.open(out).size == (64, 64)
    assert cli.main(["generate", "a red circle", "-o", str(out), "--model", str(tiny_dir), "--decoder", "tiny"]) == 2
    assert "decoder 'tiny' needs a tiny decoder" in capsys.readouterr().err


def test_generate_with_a_bf16_text_encoder(tmp_path, capsys):
    """--text-dtype bfloat16 makes an image close to the fp32 encoder's; other dtypes are refused by argparse."""
    import numpy as np

    images = {}
    for dtype in ("float32", "bfloat16"):
        out = tmp_path / f"{dtype}.png"
        assert cli.main(["generate", "a red circle", "-o", str(out), "--preset", "progressive-2", "-q",
                         "--text-dtype", dtype]) == 0
        images[dtype] = np.asarray(Image.open(out), dtype=np.float32)
    assert 0 < np.abs(images["float32"] - images["bfloat16"]).mean() < 8  # 8-bit levels
    with pytest.raises(SystemExit):
        cli.main(["generate", "x", "--text-dtype", "float16"])


def test_edit_writes_a_png_of_the_inputs_size(tiny_dir, tmp_path, capsys):
    import numpy as np

    src, mask, out = tmp_path / "in.png", tmp_path / "mask.png", tmp_path / "edited.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 16, 3), dtype=np.uint8)).save(src)
    m = np.zeros((24, 16), np.uint8)
    m[8:16, 4:12] = 255
    Image.fromarray(m).save(mask)
    base = ["edit", str(src), "a red circle", "--model", str(tiny_dir), "--steps", "4", "-o", str(out)]
    assert cli.main([*base, "--strength", "0.5"]) == 0
    assert Image.open(out).size == (16, 24)
    assert cli.main([*base, "--mask", str(mask), "--scheduler", "euler-a"]) == 0
    assert Image.open(out).size == (16, 24)
    capsys.readouterr()
    (tmp_path / "bad.png").write_bytes(b"not a png")
    assert cli.main(["edit", str(tmp_path / "bad.png"), "x", "--model", str(tiny_dir)]) == 2
    assert "is not a readable image" in capsys.readouterr().err
    assert cli.main([*base, "--strength", "1.5"]) == 2
    assert "strength must be a number in (0, 1]" in capsys.readouterr().err
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(mask)
    assert cli.main([*base, "--mask", str(mask)]) == 2
    assert "mask_image is 8x8, the image 16x24" in capsys.readouterr().err


def test_bench_on_a_model_directory(tiny_dir, tmp_path, capsys):
    """clockwork bench: every variant timed in one run against stock diffusers; JSON, PNG, a table."""
    import json

    out, plot = tmp_path / "bench.json", tmp_path / "bench.png"
    assert cli.main(["bench", "--model", str(tiny_dir), "--steps", "2", "--size", "16", "--repeats", "2",
                     "--no-inductor", "--json", str(out), "--plot", str(plot)]) == 0
    result = json.loads(out.read_text())
    assert list(result["variants"]) == ["diffusers", "full", "clockwork_identity"]
    for v in result["variants"].values():
        assert v["median_s"] > 0 and v["speedup"] > 0 and v["gflops_per_image"] > 0 and len(v["times_s"]) == 2
    assert result["variants"]["diffusers"]["speedup"] == 1.0
    # clockwork's adaptor steps skip the low-res middle: fewer FLOPs than full mode
    assert result["variants"]["clockwork_identity"]["gflops_per_image"] < result["variants"]["full"]["gflops_per_image"]
    assert Image.open(plot).size[0] > 0
    assert "clockwork_identity" in capsys.readouterr().out


def test_normal_output_has_no_library_noise(tiny_dir, tmp_path, capfd):
    """No loading bars or advisory warnings of transformers/diffusers on the normal path."""
    assert cli.main(["generate", "a red circle", "-o", str(tmp_path / "q.png"), "--model", str(tiny_dir),
                     "--steps", "2", "--height", "16", "--width", "16", "-q"]) == 0
    err = capfd.readouterr().err
    for noise in ("Loading weights", "accelerate", "safety checker", "deprecated"):
        assert noise not in err, err
