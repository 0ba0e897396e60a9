"""AlbertConfig: every field of Hugging Face's AlbertConfig, read from and written to config.json."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from runtime.taskspec import TASKS, UnknownTaskError

ACTIVATIONS = ("gelu", "gelu_new", "relu", "silu", "swish", "gelu_fast", "gelu_pytorch_tanh")
PROBLEM_TYPES = (None, "regression", "single_label_classification", "multi_label_classification")


class ConfigError(ValueError):
    """An ALBERT config that cannot describe a working model."""


@dataclass
class AlbertConfig:
    vocab_size: int = 30000
    embedding_size: int = 128
    hidden_size: int = 4096
    num_hidden_layers: int = 12
    num_hidden_groups: int = 1
    num_attention_heads: int = 64
    intermediate_size: int = 16384
    inner_group_num: int = 1
    hidden_act: str = "gelu_new"
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    classifier_dropout_prob: float | None = 0.1
    position_embedding_type: str = "absolute"
    pad_token_id: int = 0
    bos_token_id: int = 2
    eos_token_id: int = 3
    id2label: dict[int, str] = field(default_factory=lambda: {0: "LABEL_0", 1: "LABEL_1"})
    problem_type: str | None = None
    tie_word_embeddings: bool = True
    extra: dict[str, Any] = field(default_factory=dict)  # unknown keys, written back unchanged

    def __post_init__(self) -> None:
        self.id2label = {int(k): str(v) for k, v in self.id2label.items()}
        self.validate()

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @property
    def label2id(self) -> dict[str, int]:
        return {label: index for index, label in self.id2label.items()}

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def group_of_layer(self, layer: int) -> int:
        """The layer group used at `layer` (HF: int(i / (N / G)))."""
        return int(layer / (self.num_hidden_layers / self.num_hidden_groups))

    def validate(self) -> None:
        problems = []
        positive = ("vocab_size", "embedding_size", "hidden_size", "num_hidden_layers", "num_hidden_groups",
                    "num_attention_heads", "intermediate_size", "inner_group_num", "max_position_embeddings",
                    "type_vocab_size")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                problems.append(f"{name} must be a positive integer, got {value!r}")
        if not problems:
            if self.hidden_size % self.num_attention_heads:
                problems.append(
                    f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                    f"{self.num_attention_heads}"
                )
            if self.num_hidden_layers % self.num_hidden_groups:
                problems.append(
                    f"num_hidden_layers {self.num_hidden_layers} is not divisible by num_hidden_groups "
                    f"{self.num_hidden_groups}"
                )
        if self.hidden_act not in ACTIVATIONS:
            problems.append(f"hidden_act {self.hidden_act!r} is not supported; use one of {', '.join(ACTIVATIONS)}")
        if self.position_embedding_type != "absolute":
            problems.append(
                f"position_embedding_type {self.position_embedding_type!r} is not supported; only 'absolute'"
            )
        if self.problem_type not in PROBLEM_TYPES:
            problems.append(f"problem_type {self.problem_type!r} is not one of {PROBLEM_TYPES}")
        if not self.id2label:
            problems.append("id2label is empty; a model needs at least one label")
        if problems:
            raise ConfigError("invalid ALBERT config: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AlbertConfig":
        data = dict(data)
        model_type = data.pop("model_type", "albert")
        if model_type != "albert":
            raise ConfigError(f"config.json describes a {model_type!r} model, not ALBERT")
        known = {f.name for f in fields(cls)} - {"extra"}
        if "id2label" not in data and "num_labels" in data:
            data["id2label"] = {i: f"LABEL_{i}" for i in range(int(data["num_labels"]))}
        data.pop("num_labels", None)
        data.pop("label2id", None)
        kwargs = {k: v for k, v in data.items() if k in known}
        extra = {k: v for k, v in data.items() if k not in known}
        return cls(**kwargs, extra=extra)

    @classmethod
    def from_json_file(cls, path: str | Path) -> "AlbertConfig":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"{path} does not exist; an ALBERT checkpoint needs a config.json") from exc
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a JSON object")
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        extra = data.pop("extra")
        data["id2label"] = {str(k): v for k, v in self.id2label.items()}
        data["label2id"] = self.label2id
        return {**extra, "model_type": "albert", **data}

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / "config.json"
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path


# optimum's TasksManager mapping (its `--task auto`): the head class a checkpoint was saved from -> the task
ARCHITECTURE_TASKS = {
    "AlbertForMaskedLM": "fill-mask",
    "AlbertForSequenceClassification": "text-classification",
    "AlbertForTokenClassification": "token-classification",
    "AlbertForQuestionAnswering": "question-answering",
    "AlbertForMultipleChoice": "multiple-choice",
    "AlbertForPreTraining": "pretraining",
    "AlbertModel": "feature-extraction",
}


class TaskDetectionError(UnknownTaskError):
    """--task was left out and config.json's `architectures` name no single task."""


def task_from_architectures(config: AlbertConfig, source: str | Path) -> str:
    """The task of the one Albert* head class config.json names, or TaskDetectionError naming the choices."""
    named = config.extra.get("architectures") or []
    named = [name for name in named if isinstance(name, str)] if isinstance(named, list) else []
    tasks = list(dict.fromkeys(ARCHITECTURE_TASKS[name] for name in named if name in ARCHITECTURE_TASKS))
    if len(tasks) == 1:
        return tasks[0]
    where = Path(source) / "config.json"
    if tasks:
        raise TaskDetectionError(f"{where} names architectures {', '.join(named)} for {len(tasks)} tasks; "
                                 f"pass --task {' or --task '.join(tasks)}")
    found = f" (it names {', '.join(named)})" if named else ""
    raise TaskDetectionError(f"--task is needed: {where} names no Albert* architecture{found}; "
                             f"pass --task with one of: {', '.join(TASKS)}")
