"""Random-weight pipelines of the real architectures, built in code (nothing downloaded).

SD v1.5 and SDXL base: the UNets from clockwork_engine.tools.flops (the fields of the published
unet/config.json that shape compute), the VAE and CLIP text towers written out below from the
published configs, DPM-Solver++ (2M) with SD's noise schedule, and a CLIP tokenizer built here
(a small byte-level vocabulary: tokenization cost is negligible, and every prompt is padded to
77 tokens, so the text towers run at their real size). tiny=True gives test-sized versions of
the same layouts for the CPU dry run. Random weights are honest for latency and parity, never
for image quality.
"""

from __future__ import annotations

import json
import string

import torch

from clockwork_engine.tools.flops import FLUX_DEV, SD15_ADAPTOR_HIDDEN, SD15_UNET, SD35_MEDIUM, SDXL_UNET

TOKENS = 77
# The ids of <|startoftext|> / <|endoftext|> in the tokenizer built here (CLIP's own are 49406 /
# 49407): the pooled output is read at the end-of-text token.
SPECIAL_IDS = dict(bos_token_id=0, eos_token_id=1, pad_token_id=1)
SD15_VAE = dict(  # runwayml/stable-diffusion-v1-5 vae/config.json
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32,
    sample_size=512, scaling_factor=0.18215,
)
# stabilityai/stable-diffusion-xl-base-1.0 vae/config.json, except force_upcast: the released fp16
# VAE overflows and is upcast to fp32 by the pipeline; random weights do not, and the engine
# decodes in the model's dtype, so both decode in fp16 here.
SDXL_VAE = {**SD15_VAE, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": False}
CLIP_L = dict(  # openai/clip-vit-large-patch14 text tower (SD v1.5's text_encoder; SDXL's first)
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=TOKENS, hidden_act="quick_gelu", projection_dim=768, **SPECIAL_IDS,
)
CLIP_BIGG = dict(  # SDXL's text_encoder_2 (OpenCLIP ViT-bigG/14 text tower, with projection)
    vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
    max_position_embeddings=TOKENS, hidden_act="gelu", projection_dim=1280, **SPECIAL_IDS,
)
SCHEDULER = dict(  # SD's noise schedule (scheduler/scheduler_config.json), sampled by DPM-Solver++ (2M)
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    steps_offset=1, timestep_spacing="leading", prediction_type="epsilon", algorithm_type="dpmsolver++",
    solver_order=2,
)

# stabilityai/stable-diffusion-3.5-medium vae/config.json (16 latent channels, no quant convs)
SD3_VAE = {**SD15_VAE, "latent_channels": 16, "sample_size": 1024, "scaling_factor": 1.5305, "shift_factor": 0.0609,
           "use_quant_conv": False, "use_post_quant_conv": False}

# Test-sized stand-ins with the same block layouts (the CPU dry run).
TINY = dict(
    sd15_unet={**SD15_UNET, "block_out_channels": (8, 16, 32, 32), "layers_per_block": 1, "cross_attention_dim": 32,
               "attention_head_dim": 2, "norm_num_groups": 4, "sample_size": 8},
    sdxl_unet={**SDXL_UNET, "block_out_channels": (8, 16, 32), "layers_per_block": 1, "transformer_layers_per_block":
               (1, 1, 2), "attention_head_dim": (2, 2, 4), "cross_attention_dim": 64, "addition_time_embed_dim": 8,
               "projection_class_embeddings_input_dim": 6 * 8 + 32, "norm_num_groups": 4, "sample_size": 8},
    vae={**SD15_VAE, "block_out_channels": (8, 8, 16, 16), "layers_per_block": 1, "norm_num_groups": 4},
    clip=dict(vocab_size=1000, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
              max_position_embeddings=TOKENS, hidden_act="quick_gelu", projection_dim=32, **SPECIAL_IDS),
    adaptor_hidden=16,
    flux={**FLUX_DEV, "in_channels": 64, "num_layers": 1, "num_single_layers": 2, "attention_head_dim": 16,
          "num_attention_heads": 2, "joint_attention_dim": 32, "pooled_projection_dim": 32,
          "axes_dims_rope": (4, 4, 8)},
    t5=dict(vocab_size=1000, d_model=32, d_ff=37, d_kv=8, num_layers=1, num_heads=2),
    sd35={**SD35_MEDIUM, "num_layers": 4, "num_attention_heads": 2, "attention_head_dim": 8, "joint_attention_dim": 64,
          "caption_projection_dim": 16, "pooled_projection_dim": 64, "sample_size": 8, "pos_embed_max_size": 16,
          "dual_attention_layers": (0,)},
)


def clip_tokenizer(folder):
    """A CLIPTokenizer over lowercase letters, digits and a few merges, padding to 77 tokens."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    chars = list(string.ascii_lowercase + string.digits + ",.!")
    merges = ["t h", "th e</w>", "o n", "i n", "e r", "a n"]
    tokens = ["<|startoftext|>", "<|endoftext|>"] + chars + [c + "</w>" for c in chars] + \
        [m.replace(" ", "") for m in merges]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(dict.fromkeys(tokens))}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=TOKENS)


def _scheduler():
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler(**SCHEDULER)


def _on(device, dtype, build):
    """Build modules directly on the device (random init of 2.6B parameters on a CPU takes
    minutes, on a GPU a second), then cast (and move whatever a constructor put elsewhere)."""
    with torch.device(device):
        return build().to(device=device, dtype=dtype).eval()


def sd15_pipeline(folder, device="cuda", dtype=torch.float16, tiny=False, seed=0):
    """StableDiffusionPipeline of the SD v1.5 architecture with random weights."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet_cfg, vae_cfg, clip_cfg = (TINY["sd15_unet"], TINY["vae"], TINY["clip"]) if tiny else (SD15_UNET, SD15_VAE,
                                                                                              CLIP_L)
    return StableDiffusionPipeline(
        unet=_on(device, dtype, lambda: UNet2DConditionModel(**unet_cfg)),
        vae=_on(device, dtype, lambda: AutoencoderKL(**vae_cfg)),
        text_encoder=_on(device, dtype, lambda: CLIPTextModel(CLIPTextConfig(**clip_cfg))),
        tokenizer=clip_tokenizer(folder / "tokenizer"), scheduler=_scheduler(), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)


def sdxl_pipeline(folder, device="cuda", dtype=torch.float16, tiny=False, seed=0):
    """StableDiffusionXLPipeline of the SDXL base architecture with random weights."""
    from diffusers import AutoencoderKL, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    if tiny:
        unet_cfg, vae_cfg, clip1, clip2 = TINY["sdxl_unet"], TINY["vae"], TINY["clip"], TINY["clip"]
    else:
        unet_cfg, vae_cfg, clip1, clip2 = SDXL_UNET, SDXL_VAE, CLIP_L, CLIP_BIGG
    tokenizer = clip_tokenizer(folder / "tokenizer")
    return StableDiffusionXLPipeline(
        unet=_on(device, dtype, lambda: UNet2DConditionModel(**unet_cfg)),
        vae=_on(device, dtype, lambda: AutoencoderKL(**vae_cfg)),
        text_encoder=_on(device, dtype, lambda: CLIPTextModel(CLIPTextConfig(**clip1))),
        text_encoder_2=_on(device, dtype, lambda: CLIPTextModelWithProjection(CLIPTextConfig(**clip2))),
        tokenizer=tokenizer, tokenizer_2=tokenizer, scheduler=_scheduler(), force_zeros_for_empty_prompt=True)


def sd35_pipeline(folder, device="cuda", dtype=torch.float16, tiny=False, seed=0):
    """StableDiffusion3Pipeline of the SD3.5 medium architecture with random weights: CLIP-L and
    CLIP-G with projections, no T5 (its 256 tokens are zeros, as diffusers makes them without
    text_encoder_3), flow-match Euler at shift 3."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    if tiny:
        model_cfg, vae_cfg = TINY["sd35"], {**TINY["vae"], "latent_channels": 16, "shift_factor": 0.0609}
        clip1, clip2 = TINY["clip"], TINY["clip"]
    else:
        model_cfg, vae_cfg, clip1, clip2 = SD35_MEDIUM, SD3_VAE, CLIP_L, CLIP_BIGG
    tokenizer = clip_tokenizer(folder / "tokenizer")
    return StableDiffusion3Pipeline(
        transformer=_on(device, dtype, lambda: SD3Transformer2DModel(**model_cfg)),
        vae=_on(device, dtype, lambda: AutoencoderKL(**vae_cfg)),
        text_encoder=_on(device, dtype, lambda: CLIPTextModelWithProjection(CLIPTextConfig(**clip1))),
        text_encoder_2=_on(device, dtype, lambda: CLIPTextModelWithProjection(CLIPTextConfig(**clip2))),
        tokenizer=tokenizer, tokenizer_2=tokenizer, text_encoder_3=None, tokenizer_3=None,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))


# google/t5-v1_1-xxl encoder (FLUX.1's text_encoder_2)
T5_XXL = dict(vocab_size=32128, d_model=4096, d_ff=10240, d_kv=64, num_layers=24, num_heads=64,
              feed_forward_proj="gated-gelu", is_gated_act=True, dense_act_fn="gelu_new")


def flux_pipeline(folder, device="cuda", dtype=torch.bfloat16, tiny=False, seed=0):
    """FluxPipeline of the FLUX.1-dev architecture with random weights (T5-XXL included: 4.8B
    parameters, its 512 tokens; a byte-level CLIP tokenizer for both text encoders), flow-match
    Euler with Flux's resolution-dependent shift."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    if tiny:
        model_cfg, vae_cfg = TINY["flux"], {**TINY["vae"], "latent_channels": 16, "shift_factor": 0.1159}
        clip, t5 = TINY["clip"], TINY["t5"]
    else:
        model_cfg, vae_cfg, clip, t5 = FLUX_DEV, {**SD3_VAE, "shift_factor": 0.1159, "scaling_factor": 0.3611}, \
            CLIP_L, T5_XXL
    tokenizer = clip_tokenizer(folder / "tokenizer")
    return FluxPipeline(
        transformer=_on(device, dtype, lambda: FluxTransformer2DModel(**model_cfg)),
        vae=_on(device, dtype, lambda: AutoencoderKL(**vae_cfg)),
        text_encoder=_on(device, dtype, lambda: CLIPTextModel(CLIPTextConfig(**clip))),
        text_encoder_2=_on(device, dtype, lambda: T5EncoderModel(T5Config(**t5))), tokenizer=tokenizer,
        tokenizer_2=tokenizer, scheduler=FlowMatchEulerDiscreteScheduler(
            shift=3.0, use_dynamic_shifting=True, base_image_seq_len=256, max_image_seq_len=4096, base_shift=0.5,
            max_shift=1.15))


def untrained_adaptor(unet, folder, steps: int, tiny=False) -> str:
    """An adaptor folder for `unet` at cut 1, clock 2: the paper's ~14M ResNet adaptor as
    initialised (its output layer starts at zero, so it returns r_out(t+1) unchanged, at its
    full compute cost)."""
    from clockwork_engine.clockwork import adaptors as A
    from clockwork_engine.clockwork.unet_split import UNetSplit
    from clockwork_engine.sampler import noise_schedulers

    split = UNetSplit(unet, 1)
    adaptor = A.Adaptor(A.AdaptorConfig.for_split(split, TINY["adaptor_hidden"] if tiny else SD15_ADAPTOR_HIDDEN))
    path = str(folder / "adaptor")
    A.save(path, adaptor, cut=1, base_fingerprint=A.model_fingerprint(unet), scheduler=noise_schedulers.describe(
        _scheduler()), steps=steps, clock={"every": 2, "adaptor_steps": None}, training={"untrained": True})
    return path
