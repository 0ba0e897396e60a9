"""Checkpoints: a local HF directory or a hub id -> config + state dict -> reference model.

Weights come from model.safetensors, or from pytorch_model.bin through torch.load(weights_only=True) only:
a checkpoint is never unpickled.
"""
from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import torch
from torch import nn

from runtime.taskspec import canonical_task

from .config import AlbertConfig
from .modeling import AlbertForTask, model_for_task

SAFETENSORS = "model.safetensors"
PYTORCH_BIN = "pytorch_model.bin"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
BASE_PREFIXES = ("embeddings.", "encoder.", "pooler.")
IGNORED_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")
HEAD_INIT_SEED = 0


class CheckpointError(ValueError):
    """A checkpoint that cannot be found or does not fit the model."""


class HeadInitializedWarning(UserWarning):
    """A task head was not in the checkpoint and was initialized (deterministically)."""


class UnusedWeightsWarning(UserWarning):
    """The checkpoint holds weights the task model does not use (another head, or the pooler)."""


def default_model_dir() -> Path:
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
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:
        raise CheckpointError(
            f"{repo_id!r} is not a local directory, and huggingface_hub is not installed to fetch it "
            "(pip install 'albert-export[export]')"
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
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no detail'}); "
            "pass a local checkpoint directory (config.json + model.safetensors), or check the id and network "
            "(HF_HUB_OFFLINE=1 uses the local cache only)"
        ) from exc
    if not (Path(local) / SAFETENSORS).exists():
        # Only the pickle-free format is fetched; a .bin-only repo must be converted first.
        raise CheckpointError(f"hub repo {repo_id!r} has no {SAFETENSORS}; only safetensors weights are fetched")
    return Path(local)


def load_config(directory: Path) -> AlbertConfig:
    return AlbertConfig.from_json_file(directory / "config.json")


def load_state_dict(directory: Path) -> dict[str, torch.Tensor]:
    safetensors_path, bin_path = directory / SAFETENSORS, directory / PYTORCH_BIN
    try:
        if safetensors_path.exists():
            from safetensors.torch import load_file

            return load_file(str(safetensors_path))
        if bin_path.exists():
            return torch.load(bin_path, map_location="cpu", weights_only=True)
    except Exception as exc:
        broken = safetensors_path if safetensors_path.exists() else bin_path
        raise CheckpointError(f"{broken} cannot be read ({type(exc).__name__}: {exc}); re-save the checkpoint") from exc
    raise CheckpointError(f"{directory} has no weights: expected {SAFETENSORS} or {PYTORCH_BIN}")


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
        raise CheckpointError(f"{source}: weights whose shape does not match config.json: {', '.join(misshaped)}")
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
    directory = resolve_checkpoint(path_or_hub_id)
    config = load_config(directory)
    model = model_for_task(config, task)
    load_into(model, normalize_keys(load_state_dict(directory)), str(directory))
    model.output_hidden_states, model.output_attentions = bool(output_hidden_states), bool(output_attentions)
    return model.eval()
