"""demo.pipeline.export: the committed layout stores unet/vae in fp16 and loads as fp32."""

import torch
from safetensors.torch import load_file

from clockwork_engine import Engine
from clockwork_engine.demo.pipeline import export


def test_export_halves_weights_and_loads_as_fp32(tiny_dir, tiny_pipe, tmp_path):
    dst = tmp_path / "exported"
    export(str(tiny_dir), str(dst))
    for part in ("unet", "vae"):
        tensors = load_file(str(dst / part / "diffusion_pytorch_model.safetensors"))
        assert {t.dtype for t in tensors.values()} == {torch.float16}
    src = Engine.from_pretrained(str(tiny_dir), config="full")
    out = Engine.from_pretrained(str(dst), config="full")
    assert next(out.unet.parameters()).dtype == torch.float32
    a, b = (e.generate("a red circle", seed=0, output="latent") for e in (src, out))
    assert not torch.equal(a, b)  # the weights were rounded...
    torch.testing.assert_close(b, a, rtol=0, atol=2e-2)  # ...by fp16, nothing more
