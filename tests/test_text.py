"""Prompt encoding in another dtype: a bf16 copy of the text encoder, embeddings in fp32."""

import pytest
import torch

from clockwork_engine import Engine, EngineConfig

GOOD = dict(steps=3, seed=0, height=16, width=16, output="latent")
PROMPTS = ["a red circle", "a small blue square at the top left"]


def relative_error(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("backend", ["cpu", "inductor"])
def test_bf16_text_encoder_gives_fp32_embeddings_close_to_fp32(tiny_pipe, backend):
    fp32 = Engine.from_pipeline(tiny_pipe)
    bf16 = fp32.with_config(text_dtype="bfloat16", backend=backend)
    reference = fp32.prompts.encode(PROMPTS)
    embeddings = bf16.prompts.encode(PROMPTS)
    assert embeddings.dtype == torch.float32 and embeddings.shape == reference.shape
    assert 0 < relative_error(embeddings, reference) < 0.02  # bf16: 8 mantissa bits
    # The loaded encoder is shared by both engines: it stays fp32.
    assert tiny_pipe.text_encoder.dtype == torch.float32
    torch.testing.assert_close(fp32.prompts.encode(PROMPTS), reference, rtol=0, atol=0)
    latents = bf16.generate(PROMPTS[0], **GOOD)
    assert torch.isfinite(latents).all()
    assert relative_error(latents, fp32.generate(PROMPTS[0], **GOOD)) < 0.05


def test_bad_text_dtype():
    with pytest.raises(ValueError, match="text_dtype must be one of float32, bfloat16"):
        EngineConfig(text_dtype="float16")
