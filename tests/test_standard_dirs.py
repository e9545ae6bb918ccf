"""Diffusers' own SD v1.x / v2.x directory layouts load as they are: CLIPTokenizer and
CLIPTextModel in their folders, safety_checker/ and feature_extractor/ present (skipped with a
one-line note), *.fp16.safetensors variants, fp16 weights, SD v1.5's PNDM scheduler config.
Written here by save_pretrained from test-sized configs; latents equal
StableDiffusionPipeline.from_pretrained of the same directory."""

import json
import logging
import string

import diffusers
import pytest
import torch
from conftest import TINY_UNET, TINY_VAE
from transformers import CLIPConfig, CLIPImageProcessor, CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from clockwork_engine import Engine
from clockwork_engine.models import loading

# SD v1.5's scheduler/scheduler_config.json (PNDM) and SD v2.x's (DDIM, v-prediction at 768)
SD15_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                      set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1, trained_betas=None)
SD2_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                     clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="v_prediction")


def clip_tokenizer(folder) -> CLIPTokenizer:
    """A small byte-level BPE vocabulary and merges file in CLIP's format."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(string.ascii_lowercase + string.digits + ",.!")
    merges = ["r e", "re d</w>", "c i", "ci r", "cir c", "circ l", "circl e</w>", "b l", "bl u", "blu e</w>"]
    tokens = ["<|startoftext|>", "<|endoftext|>"] + chars + [c + "</w>" for c in chars] + \
        [m.replace(" ", "") for m in merges]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(dict.fromkeys(tokens))}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=16)


def sd_pipeline(tmp_path, scheduler, v2: bool = False):
    """An SD layout of random test-sized components, with a safety checker and feature extractor."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker

    torch.manual_seed(0)
    tokenizer = clip_tokenizer(tmp_path / "tok")
    text_cfg = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                    vocab_size=len(tokenizer), max_position_embeddings=16, projection_dim=32,
                    hidden_act="gelu" if v2 else "quick_gelu")
    text_encoder = CLIPTextModel(CLIPTextConfig(**text_cfg)).eval()
    unet_cfg = {**TINY_UNET, "attention_head_dim": (2, 4, 8)} if v2 else TINY_UNET  # SD 2's per-level heads
    if v2:
        unet_cfg = {**unet_cfg, "use_linear_projection": True}
    checker = StableDiffusionSafetyChecker(CLIPConfig(
        text_config=text_cfg, projection_dim=32,
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4,
                           image_size=32, patch_size=8))).eval()
    return diffusers.StableDiffusionPipeline(
        vae=diffusers.AutoencoderKL(**TINY_VAE), text_encoder=text_encoder, tokenizer=tokenizer,
        unet=diffusers.UNet2DConditionModel(**unet_cfg), scheduler=scheduler, safety_checker=checker,
        feature_extractor=CLIPImageProcessor(crop_size=32, size=32), requires_safety_checker=False)


def latents_both_ways(path, prompt="a red circle", steps=4, guidance=5.0, seed=1, **load):
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(path, safety_checker=None, **load)
    ref = pipe(prompt, num_inference_steps=steps, guidance_scale=guidance, height=16, width=16,
               generator=torch.Generator().manual_seed(seed), output_type="latent").images[0]
    engine = Engine.from_pretrained(str(path), config="full", torch_dtype=load.get("torch_dtype"))
    got = engine.generate(prompt, steps=steps, guidance_scale=guidance, seed=seed, height=16, width=16,
                          output="latent")
    return engine, got, ref


def test_sd15_layout_loads_as_saved(tmp_path, caplog):
    path = tmp_path / "sd15"
    sd_pipeline(tmp_path, diffusers.PNDMScheduler(**SD15_SCHEDULER)).save_pretrained(path)
    assert (path / "safety_checker").is_dir() and (path / "feature_extractor").is_dir()
    with caplog.at_level(logging.INFO, logger="clockwork_engine"):
        engine, got, ref = latents_both_ways(path)
    notes = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(notes) == 1 and "safety_checker" in notes[0] and "feature_extractor" in notes[0]
    assert type(engine.scheduler).__name__ == "PNDMScheduler"
    assert type(engine.prompts.tokenizer).__name__.startswith("CLIPTokenizer")
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)


def test_sd2_layout_with_v_prediction_loads_as_saved(tmp_path):
    path = tmp_path / "sd2"
    sd_pipeline(tmp_path, diffusers.DDIMScheduler(**SD2_SCHEDULER), v2=True).save_pretrained(path)
    _, got, ref = latents_both_ways(path, guidance=7.5)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)


def test_fp16_variant_files_load(tmp_path):
    """save_pretrained(variant="fp16") writes only *.fp16.safetensors; both loaders take the variant."""
    path = tmp_path / "fp16"
    pipe = sd_pipeline(tmp_path, diffusers.PNDMScheduler(**SD15_SCHEDULER)).to(torch.float16)
    pipe.save_pretrained(path, variant="fp16")
    files = sorted(p.name for p in (path / "unet").iterdir())
    assert files == ["config.json", "diffusion_pytorch_model.fp16.safetensors"]
    assert loading.weights_variant(str(path / "unet")) == "fp16"
    engine, got, ref = latents_both_ways(path, variant="fp16", torch_dtype=torch.float32)
    assert engine.unet.dtype == torch.float32
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)


def test_fp16_weights_load_and_sample(tmp_path):
    """Plain fp16 weights (no variant) load as fp16 when asked and give finite latents close to fp32's."""
    path = tmp_path / "half"
    sd_pipeline(tmp_path, diffusers.PNDMScheduler(**SD15_SCHEDULER)).to(torch.float16).save_pretrained(path)
    half = Engine.from_pretrained(str(path), config="full", torch_dtype=torch.float16)
    full = Engine.from_pretrained(str(path), config="full", torch_dtype=torch.float32)
    assert half.unet.dtype == torch.float16
    kw = dict(steps=3, seed=0, height=16, width=16, output="latent")
    a, b = half.generate("a red circle", **kw), full.generate("a red circle", **kw)
    assert torch.isfinite(a).all()
    assert (a - b).abs().max() < 0.05 * b.abs().max()  # fp16 rounding, not another result


def test_outdated_scheduler_config_is_rewritten_as_the_pipeline_does(tmp_path):
    path = tmp_path / "old"
    sd_pipeline(tmp_path, diffusers.PNDMScheduler(**SD15_SCHEDULER)).save_pretrained(path)
    cfg_file = path / "scheduler" / "scheduler_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg.update(_class_name="DDIMScheduler", steps_offset=0, clip_sample=True)
    cfg_file.write_text(json.dumps(cfg))
    index = json.loads((path / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", "DDIMScheduler"]
    (path / "model_index.json").write_text(json.dumps(index))
    engine, got, ref = latents_both_ways(path)
    assert engine.scheduler.config.steps_offset == 1 and engine.scheduler.config.clip_sample is False
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["euler-a", "dpm++2m-karras", "unipc"])
def test_a_named_scheduler_on_a_standard_directory(tmp_path, name):
    from clockwork_engine.sampler import noise_schedulers

    path = tmp_path / "sd15"
    sd_pipeline(tmp_path, diffusers.PNDMScheduler(**SD15_SCHEDULER)).save_pretrained(path)
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(path, safety_checker=None)
    pipe.scheduler = noise_schedulers.from_name(name, pipe.scheduler)
    ref = pipe("a blue circle", num_inference_steps=5, guidance_scale=4.0, height=16, width=16,
               generator=torch.Generator().manual_seed(2), output_type="latent").images[0]
    engine = Engine.from_pretrained(str(path), config="full").with_config(scheduler=name)
    got = engine.generate("a blue circle", steps=5, guidance_scale=4.0, seed=2, height=16, width=16, output="latent")
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)
