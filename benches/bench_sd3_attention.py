"""Would attention-map reuse pay on SD3's joint attention? Map bytes and one layer's time.

    python benches/bench_sd3_attention.py [--repeats 7]

Reuse (reuse/attention.py) keeps each layer's P = softmax(QK^T / sqrt(d)) from one step and
runs only P.V at later steps. On MMDiT every joint attention is over [image tokens, text tokens]
together, so P is (N_img + N_txt)^2 per head. This bench writes:
- the bytes of the maps one image must keep (CFG batch 2, every joint attention layer, and the
  image-only second attention of SD3.5 medium's dual-attention layers), fp16 and fp32, for SD3.5
  medium and large (published configs: tools/architectures.py) at 512x512 and 1024x1024, and
  for the SD3-layout demo at 64x64: arithmetic from the configs;
- the time of one SD3.5-medium joint attention at 512x512 (CFG batch 2, 24 heads of 64, 1024 +
  333 tokens) on this CPU: fused SDPA (what a full step runs), the reuse step's P.V alone with
  a cached fp32 P, and the compute step (explicit QK^T, softmax, the map copy, P.V): medians of
  interleaved repeats.
Writes benches/results/sd3_attention.json.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import interleaved, machine, write  # noqa: E402


def map_bytes(config: dict, side: int, text_tokens: int, bytes_per: int, vae_factor: int = 8, rows: int = 2) -> int:
    """Bytes of every joint attention's P for one image (rows: the CFG batch)."""
    img = (side // vae_factor // config["patch_size"]) ** 2
    heads, layers = config["num_attention_heads"], config["num_layers"]
    joint = layers * heads * (img + text_tokens) ** 2
    dual = len(config.get("dual_attention_layers", ())) * heads * img ** 2  # SD3.5 medium's image-only attn2
    return rows * bytes_per * (joint + dual)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    import torch
    import torch.nn.functional as F

    from clockwork_engine.demo import sd3
    from clockwork_engine.ops.attention_pv import attention_pv
    from clockwork_engine.tools.architectures import SD3_TEXT_TOKENS, SD35_LARGE, SD35_MEDIUM

    sizes = {}
    for name, config, text, side, factor in (("sd3.5-medium", SD35_MEDIUM, SD3_TEXT_TOKENS, 512, 8),
                                             ("sd3.5-medium", SD35_MEDIUM, SD3_TEXT_TOKENS, 1024, 8),
                                             ("sd3.5-large", SD35_LARGE, SD3_TEXT_TOKENS, 1024, 8),
                                             ("demo-sd3", sd3.TRANSFORMER_CONFIG, 16, 64, 4)):
        sizes[f"{name}@{side}"] = {"fp16_gib": map_bytes(config, side, text, 2, factor) / 2**30,
                                   "fp32_gib": map_bytes(config, side, text, 4, factor) / 2**30}

    g = torch.Generator().manual_seed(0)
    heads, d, tokens = SD35_MEDIUM["num_attention_heads"], SD35_MEDIUM["attention_head_dim"], 32 ** 2 + SD3_TEXT_TOKENS
    q, k, v = (torch.randn(2, heads, tokens, d, generator=g) for _ in range(3))
    probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1).flatten(0, 1)  # the cached map
    buffer = torch.empty_like(probs)

    def compute():  # the compute step: P formed explicitly, kept, then P.V
        p = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1).flatten(0, 1)
        buffer.copy_(p)
        return attention_pv(p, v.flatten(0, 1))

    with torch.no_grad():
        times = interleaved({"sdpa": lambda: F.scaled_dot_product_attention(q, k, v),
                             "reuse_pv": lambda: attention_pv(probs, v.flatten(0, 1)),
                             "compute_and_keep": compute}, args.repeats)
    sdpa = times["sdpa"]["median_s"]
    write("sd3_attention.json", {
        "command": "python " + " ".join(sys.argv),
        "map_gib_per_image": sizes,
        "layer": {"model": "sd3.5-medium", "size": 512, "rows": 2, "heads": heads, "head_dim": d, "tokens": tokens},
        "timings": times, "vs_sdpa": {k: t["median_s"] / sdpa for k, t in times.items()},
        "map_gib_per_layer_fp32": probs.numel() * 4 / 2**30, "machine": machine()})


if __name__ == "__main__":
    main()
