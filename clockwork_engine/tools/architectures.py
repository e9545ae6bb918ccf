"""The published configs of the architectures the engine counts and benches with random weights:
the fields of each model's config.json that shape compute."""

SD15_UNET = dict(  # runwayml/stable-diffusion-v1-5 unet/config.json (the fields that shape compute)
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
)
SDXL_UNET = dict(  # stabilityai/stable-diffusion-xl-base-1.0 unet/config.json (the fields that shape compute)
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
# stabilityai/stable-diffusion-3.5-medium and -large transformer/config.json (the fields that shape compute)
SD35_MEDIUM = dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24, attention_head_dim=64,
                   num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
                   pooled_projection_dim=2048, pos_embed_max_size=384, dual_attention_layers=tuple(range(13)),
                   qk_norm="rms_norm")
SD35_LARGE = dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=38, attention_head_dim=64,
                  num_attention_heads=38, joint_attention_dim=4096, caption_projection_dim=2432,
                  pooled_projection_dim=2048, pos_embed_max_size=192, qk_norm="rms_norm")
# black-forest-labs/FLUX.1-dev and -schnell transformer/config.json: FluxTransformer2DModel's
# defaults (19 double-stream and 38 single-stream blocks, 24 x 128 heads); dev embeds the guidance
FLUX_DEV = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
                axes_dims_rope=(16, 56, 56))
FLUX_SCHNELL = {**FLUX_DEV, "guidance_embeds": False}
FLUX_TEXT_TOKENS = {"flux-dev": 512, "flux-schnell": 256}  # FluxPipeline's max_sequence_length for each
SD3_TEXT_TOKENS = 77 + 256  # CLIP's tokens, then T5's (StableDiffusion3Pipeline's max_sequence_length)
SDXL_POOLED_DIM = 1280  # text_encoder_2's projection: 2816 = 1280 + 6 * 256
SD15_TEXT_TOKENS = 77
SD15_ADAPTOR_HIDDEN = 416  # 13.8M parameters: the paper's "about 14M" ResNet adaptor
