"""Checkpoints: a local HF directory or a hub id -> config + state dict -> reference model.

Weights come from model.safetensors, or from pytorch_model.bin through torch.load(weights_only=True) only:
a checkpoint is never unpickled.
"""
from __future__ import annotations

import os
import pickle
import re
import warnings
from pathlib import Path

import torch
from torch import nn

from runtime.errors import first_line
from runtime.extras import install_command
from runtime.taskspec import canonical_task

from .config import AlbertConfig
from .errors import ExportError
from .modeling import AlbertForTask, model_for_task

SAFETENSORS = "model.safetensors"
PYTORCH_BIN = "pytorch_model.bin"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
BASE_PREFIXES = ("embeddings.", "encoder.", "pooler.")
IGNORED_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")
HEAD_INIT_SEED = 0
PICKLED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
EXPORT_COPIES = 3  # fp32 weights held at once: the PyTorch model, the traced pieces, the assembled graph


class CheckpointError(ExportError, ValueError):
    """A checkpoint that cannot be found or does not fit the model."""


class HeadInitializedWarning(UserWarning):
    """A task head was not in the checkpoint and was initialized (deterministically)."""


class UnusedWeightsWarning(UserWarning):
    """The checkpoint holds weights the task model does not use (another head, or the pooler)."""


def default_model_dir() -> Path:
    """The directory of the default model embedded in the package (the checkpoint when none is given)."""
    return Path(__file__).resolve().parent / "default_model"


def resolve_checkpoint(path_or_hub_id: str | Path | None) -> Path:
    """A local directory as is; a hub id through huggingface_hub; None -> the embedded default model."""
    if path_or_hub_id is None:
        return default_model_dir()
    path = Path(path_or_hub_id).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f"{path} is a file; pass the checkpoint directory (config.json + weights)")
    name = str(path_or_hub_id)
    if not HUB_ID.match(name) or name.startswith((".", "/", "~")):
        raise CheckpointError(f"checkpoint directory {name!r} does not exist")
    return download_from_hub(name)


def download_from_hub(repo_id: str) -> Path:
    """The local snapshot of hub repo `repo_id` (config, safetensors weights, tokenizer files); CheckpointError if
    it cannot be had (HF_HUB_OFFLINE: from the local cache only)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:
        raise CheckpointError(
            f"{repo_id!r} is not a local directory, and huggingface_hub is not installed to fetch it "
            f"({install_command('export')})"
        ) from exc
    patterns = ["config.json", SAFETENSORS, "tokenizer.json", "tokenizer_config.json", "spiece.model",
                "special_tokens_map.json"]
    # Read at call time: huggingface_hub reads these once, at import, which may be before the user set them.
    offline = os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}
    try:
        local = snapshot_download(repo_id, allow_patterns=patterns, local_files_only=offline,
                                  cache_dir=os.environ.get("HF_HUB_CACHE") or None)
    except Exception as exc:  # unknown repo, gated repo, no network: all end the same way for the user
        if offline:
            raise CheckpointError(
                f"{repo_id!r} is not a local directory, and HF_HUB_OFFLINE is set, so the hub is not asked and "
                "the id is not in the local cache either; pass a local checkpoint directory (config.json + "
                "model.safetensors), or unset HF_HUB_OFFLINE to download it"
            ) from exc
        raise CheckpointError(
            f"{repo_id!r} is not a local directory and could not be fetched from the Hugging Face hub "
            f"({first_line(exc) or 'no detail'}); "
            "pass a local checkpoint directory (config.json + model.safetensors), or check the id and network "
            "(HF_HUB_OFFLINE=1 uses the local cache only)"
        ) from exc
    if not (Path(local) / SAFETENSORS).exists():
        # Only the pickle-free format is fetched; a .bin-only repo must be converted first.
        raise CheckpointError(f"hub repo {repo_id!r} has no {SAFETENSORS}; only safetensors weights are fetched")
    return Path(local)


def load_config(directory: Path) -> AlbertConfig:
    """The checkpoint's config.json as an AlbertConfig."""
    return AlbertConfig.from_json_file(directory / "config.json")


def load_state_dict(directory: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's weights: model.safetensors, else pytorch_model.bin read with weights_only (no pickled code);
    CheckpointError where they are missing, refused or damaged."""
    safetensors_path, bin_path = directory / SAFETENSORS, directory / PYTORCH_BIN
    try:
        if safetensors_path.exists():
            from safetensors.torch import load_file

            state = load_file(str(safetensors_path))
        elif bin_path.exists():
            state = torch.load(bin_path, map_location="cpu", weights_only=True)
        else:
            raise CheckpointError(f"{directory} has no weights: expected {SAFETENSORS} or {PYTORCH_BIN}")
    except pickle.UnpicklingError as exc:
        refused = PICKLED_GLOBAL.search(str(exc))
        what = f"the Python global {refused.group(1)}" if refused else "a Python object that is not a tensor"
        raise CheckpointError(
            f"{bin_path} asks to load {what}; albert-export never unpickles code (weights are read with "
            f"torch.load(weights_only=True) or from {SAFETENSORS}), so it refused the file: convert the checkpoint "
            f"to {SAFETENSORS} where you trust its source") from None
    except (CheckpointError, MemoryError):
        raise
    except Exception as exc:  # safetensors, torch and zipfile each raise their own kinds for a damaged file
        broken = safetensors_path if safetensors_path.exists() else bin_path
        raise CheckpointError(f"{broken} cannot be read ({first_line(exc) or 'no detail'}); the file is damaged or truncated, "
                              "re-save the checkpoint") from None
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise CheckpointError(f"{bin_path} holds no state dict of tensors; save the model's state_dict()")
    return state


def check_finite(state: dict[str, torch.Tensor], source: str) -> None:
    """NaN or Inf in a weight makes every output NaN: refuse, naming the tensors, instead of exporting it."""
    bad = []
    for key, tensor in state.items():
        if tensor.is_floating_point() or tensor.is_complex():
            nan, inf = int(torch.isnan(tensor).sum()), int(torch.isinf(tensor).sum())
            if nan or inf:
                bad.append(f"{key} ({nan} NaN, {inf} Inf of {tensor.numel()})")
    if bad:
        raise CheckpointError(f"{source}: weights with non-finite values: {', '.join(bad[:5])}"
                              f"{f' and {len(bad) - 5} more' if len(bad) > 5 else ''}; the checkpoint is broken, "
                              "re-save it from a model that trains without NaN/Inf")


def available_memory() -> int | None:
    """Bytes this process can still allocate without swapping (Linux MemAvailable), None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def export_memory(config: AlbertConfig) -> int:
    """Bytes an export holds at its peak: the fp32 weights EXPORT_COPIES times, and validation at (1, max
    positions) with its attention scores, intermediate activations and vocabulary logits."""
    positions = config.max_position_embeddings
    activations = 4 * positions * (3 * config.num_attention_heads * positions + 4 * config.intermediate_size
                                   + config.vocab_size)
    return EXPORT_COPIES * 4 * config.parameter_count() + activations


def check_fits_in_memory(config: AlbertConfig, source: str) -> None:
    """Before any allocation: refuse a model that cannot be exported in the memory that is available."""
    needed, available = export_memory(config), available_memory()
    if available is not None and needed > available:
        raise CheckpointError(
            f"{source}: exporting this model needs about {needed / 1e9:.1f} GB of memory "
            f"({config.parameter_count():,} parameters, validation at {config.max_position_embeddings} positions) "
            f"but {available / 1e9:.1f} GB are available; check config.json's sizes, or export on a larger machine")


def normalize_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A bare AlbertModel checkpoint names its keys without the 'albert.' prefix the task models use."""
    normalized = {}
    for key, tensor in state.items():
        if key.startswith(BASE_PREFIXES):
            key = "albert." + key
        if key.removeprefix("albert.") in IGNORED_BUFFERS:
            continue
        normalized[key] = tensor
    return normalized


def tied_keys(model: AlbertForTask) -> set[str]:
    """Keys that alias another parameter, so a checkpoint may omit them: the MLM decoder's bias is always
    predictions.bias, and its weight is the word embedding matrix when tie_word_embeddings is set."""
    if not hasattr(model, "predictions"):
        return set()
    tied_weight = {"predictions.decoder.weight"} if model.config.tie_word_embeddings else set()
    return {"predictions.decoder.bias"} | tied_weight


def initialize_parameter(model: nn.Module, key: str, config: AlbertConfig, generator: torch.Generator) -> None:
    """transformers' _init_weights for one missing parameter, seeded so a fresh head is the same every export.

    Parameter by parameter, never module by module: a module can hold a loaded alias (the MLM decoder holds the
    word embeddings and predictions.bias), which must not be overwritten.
    """
    owner_name, _, attribute = key.rpartition(".")
    owner = model.get_submodule(owner_name)
    parameter = getattr(owner, attribute)
    with torch.no_grad():
        if attribute == "bias":
            parameter.zero_()
        elif isinstance(owner, nn.LayerNorm):
            parameter.fill_(1.0)
        else:
            parameter.normal_(0.0, config.initializer_range, generator=generator)


def load_into(model: AlbertForTask, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy a normalized state dict into the model; errors and warnings name the keys."""
    expected = model.state_dict()
    optional = tied_keys(model)
    if "predictions.bias" in expected and "predictions.bias" not in state and "predictions.decoder.bias" in state:
        state = {**state, "predictions.bias": state["predictions.decoder.bias"]}  # older saves keep only this alias
    misshaped = [
        f"{key} (checkpoint {tuple(state[key].shape)}, model {tuple(tensor.shape)})"
        for key, tensor in expected.items()
        if key in state and state[key].shape != tensor.shape
    ]
    if misshaped:
        labels = (" (config.json's id2label names one label per output of the task head)"
                  if any(name.startswith("classifier.") for name in misshaped) else "")
        raise CheckpointError(f"{source}: weights whose shape does not match config.json{labels}: "
                              f"{', '.join(misshaped)}")
    missing = [key for key in expected if key not in state and key not in optional]
    missing_base = [key for key in missing if key.startswith("albert.") and not key.startswith("albert.pooler.")]
    if missing_base:
        raise CheckpointError(f"{source}: the checkpoint lacks ALBERT weights: {', '.join(missing_base)}")
    unexpected = [key for key in state if key not in expected]
    with torch.no_grad():
        for key, tensor in expected.items():
            if key in state and key not in optional:  # an alias takes the value of the parameter it aliases
                tensor.copy_(state[key].to(tensor.dtype))
    if missing:
        generator = torch.Generator().manual_seed(HEAD_INIT_SEED)
        for key in missing:
            initialize_parameter(model, key, model.config, generator)
        warnings.warn(
            f"{source}: {', '.join(missing)} were not in the checkpoint and are newly initialized (seed "
            f"{HEAD_INIT_SEED}); train the {model.task} head before relying on its outputs",
            HeadInitializedWarning,
            stacklevel=3,
        )
    if unexpected:
        warnings.warn(f"{source}: checkpoint weights not used by the {model.task} model: {', '.join(unexpected)}",
                      UnusedWeightsWarning, stacklevel=3)
    model.tie_weights()


def from_pretrained(path_or_hub_id: str | Path | None, task: str, *, output_hidden_states: bool = False,
                    output_attentions: bool = False) -> AlbertForTask:
    """The PyTorch reference model for `task`, in eval mode, with the checkpoint's weights. The output_* flags
    are the defaults of its forward's arguments (as transformers' from_pretrained(..., output_attentions=True))."""
    task = canonical_task(task)
    return reference_from_checkpoint(resolve_checkpoint(path_or_hub_id), task,
                                     output_hidden_states=output_hidden_states, output_attentions=output_attentions)


def reference_from_checkpoint(directory: Path, task: str, *, output_hidden_states: bool = False,
                              output_attentions: bool = False) -> AlbertForTask:
    """from_pretrained for a checkpoint directory already resolved and a task name already canonical."""
    config = load_config(directory)
    check_fits_in_memory(config, str(directory))
    state = normalize_keys(load_state_dict(directory))
    check_finite(state, str(directory))
    model = model_for_task(config, task)
    load_into(model, state, str(directory))
    model.output_hidden_states, model.output_attentions = bool(output_hidden_states), bool(output_attentions)
    return model.eval()
