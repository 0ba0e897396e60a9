"""AlbertConfig: every field of Hugging Face's AlbertConfig, read from and written to config.json."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from runtime.arguments import is_integer
from runtime.bundle import LABEL_ID
from runtime.taskspec import TASKS, UnknownTaskError, task_table

from .errors import ExportError

ACTIVATIONS = ("gelu", "gelu_new", "relu", "silu", "swish", "gelu_fast", "gelu_pytorch_tanh")
PROBLEM_TYPES = (None, "regression", "single_label_classification", "multi_label_classification")


class ConfigError(ExportError, ValueError):
    """An ALBERT config that cannot describe a working model."""


# Far beyond any ALBERT (xxlarge: H 4096, I 16384, 12 layers, 512 positions, vocab 30000), low enough that a
# typo (10**9) is refused before torch tries to allocate it, or the unrolled graph to hold it. The memory the
# whole model needs is checked against the machine separately (checkpoint.check_fits_in_memory).
LIMITS = {
    "vocab_size": 1 << 20,
    "embedding_size": 1 << 16,
    "hidden_size": 1 << 16,
    "num_hidden_layers": 1024,
    "num_hidden_groups": 1024,
    "num_attention_heads": 1024,
    "intermediate_size": 1 << 18,
    "inner_group_num": 64,
    "max_position_embeddings": 1 << 16,
    "type_vocab_size": 1024,
}
MAX_LABELS = 1 << 16


@dataclass
class AlbertConfig:
    """An ALBERT config.json: Hugging Face's fields and defaults, checked on creation; unknown keys kept in extra."""
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
        self.id2label = labels_by_id(self.id2label)
        self.validate()

    @property
    def num_labels(self) -> int:
        """How many labels id2label names."""
        return len(self.id2label)

    @property
    def label2id(self) -> dict[str, int]:
        """id2label inverted: label name -> id."""
        return {label: index for index, label in self.id2label.items()}

    @property
    def head_size(self) -> int:
        """The width of one attention head (hidden_size / num_attention_heads)."""
        return self.hidden_size // self.num_attention_heads

    def group_of_layer(self, layer: int) -> int:
        """The layer group used at `layer` (HF: int(i / (N / G)))."""
        return int(layer / (self.num_hidden_layers / self.num_hidden_groups))

    def validate(self) -> None:
        """Raise ConfigError naming every problem: sizes and their limits, floats, pad id, labels, divisibility,
        activation, position embedding type, problem type."""
        problems = []
        positive = ("vocab_size", "embedding_size", "hidden_size", "num_hidden_layers", "num_hidden_groups",
                    "num_attention_heads", "intermediate_size", "inner_group_num", "max_position_embeddings",
                    "type_vocab_size")
        for name in positive:
            value = getattr(self, name)
            if not is_integer(value, numpy=False) or value < 1:
                problems.append(f"{name} must be a positive integer, got {value!r}")
            elif value > LIMITS[name]:
                problems.append(f"{name} {value} exceeds the limit of {LIMITS[name]} this exporter accepts")
        problems += float_problems(self)
        pad = self.pad_token_id
        if pad is not None and (not is_integer(pad, numpy=False) or pad < 0
                                or (isinstance(self.vocab_size, int) and pad >= self.vocab_size)):
            problems.append(f"pad_token_id must be a token id in 0..vocab_size-1 (or null), got {pad!r}")
        if not isinstance(self.tie_word_embeddings, bool):
            problems.append(f"tie_word_embeddings must be true or false, got {self.tie_word_embeddings!r}")
        if len(self.id2label) > MAX_LABELS:
            problems.append(f"id2label has {len(self.id2label)} labels, more than the limit of {MAX_LABELS}")
        elif sorted(self.id2label) != list(range(len(self.id2label))):
            problems.append(f"id2label must number its labels 0..{len(self.id2label) - 1}, got ids "
                            f"{sorted(self.id2label)[:8]}")
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
        if not isinstance(self.hidden_act, str) or self.hidden_act not in ACTIVATIONS:
            problems.append(f"hidden_act {self.hidden_act!r} is not supported; use one of {', '.join(ACTIVATIONS)}")
        if not isinstance(self.position_embedding_type, str) or self.position_embedding_type != "absolute":
            problems.append(
                f"position_embedding_type {self.position_embedding_type!r} is not supported; only 'absolute'"
            )
        if not isinstance(self.problem_type, (str, type(None))) or self.problem_type not in PROBLEM_TYPES:
            problems.append(f"problem_type {self.problem_type!r} is not one of {PROBLEM_TYPES}")
        if not self.id2label:
            problems.append("id2label is empty; a model needs at least one label")
        if problems:
            raise ConfigError("invalid ALBERT config: " + "; ".join(problems))

    def parameter_count(self) -> int:
        """Parameters of the largest task model (the MLM head's V x E decoder tied to the embeddings)."""
        v, e, h, i, p, t = (self.vocab_size, self.embedding_size, self.hidden_size, self.intermediate_size,
                            self.max_position_embeddings, self.type_vocab_size)
        embeddings = (v + p + t) * e + 2 * e
        layer = 4 * (h * h + h) + 2 * h * i + i + h + 4 * h
        encoder = e * h + h + self.num_hidden_groups * self.inner_group_num * layer
        heads = h * h + h + h * e + e + 2 * e + v + max(len(self.id2label), 2) * h
        return embeddings + encoder + heads

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AlbertConfig":
        """A config from config.json's object: model_type must be albert, num_labels alone fills id2label, label2id is
        dropped, unknown keys go to extra; ConfigError for anything invalid."""
        data = dict(data)
        model_type = data.pop("model_type", "albert")
        if model_type != "albert":
            raise ConfigError(f"config.json describes a {model_type!r} model, not ALBERT")
        known = {f.name for f in fields(cls)} - {"extra"}
        num_labels = data.pop("num_labels", None)
        if num_labels is not None and (not is_integer(num_labels, numpy=False) or not 1 <= num_labels <= MAX_LABELS):
            raise ConfigError(f"invalid ALBERT config: num_labels must be an integer in 1..{MAX_LABELS}, "
                              f"got {num_labels!r}")
        if data.get("id2label") is None and num_labels is not None:
            data["id2label"] = {i: f"LABEL_{i}" for i in range(num_labels)}
        elif data.get("id2label") is None:
            data.pop("id2label", None)
        data.pop("label2id", None)
        kwargs = {k: v for k, v in data.items() if k in known}
        extra = {k: v for k, v in data.items() if k not in known}
        try:
            return cls(**kwargs, extra=extra)
        except ConfigError:
            raise
        except (TypeError, ValueError, OverflowError) as exc:  # a field of a type no check expected
            raise ConfigError(f"invalid ALBERT config: {exc}") from None

    @classmethod
    def from_json_file(cls, path: str | Path) -> "AlbertConfig":
        """The config read from a config.json; ConfigError where it is missing, unreadable or not a JSON object."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"{path} does not exist; an ALBERT checkpoint needs a config.json") from exc
        except OSError as exc:
            raise ConfigError(f"{path} cannot be read ({exc.strerror}); an ALBERT checkpoint needs a readable "
                              "config.json") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path} is not UTF-8 text (byte {exc.start}); config.json must be a JSON file") from exc
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path} is not valid JSON: {exc}") from exc
        except RecursionError as exc:
            raise ConfigError(f"{path} is nested too deeply to be a config.json") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a JSON object")
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        """config.json's content: the unknown keys, model_type albert, the fields, id2label by string, label2id."""
        data = asdict(self)
        extra = data.pop("extra")
        data["id2label"] = {str(k): v for k, v in self.id2label.items()}
        data["label2id"] = self.label2id
        return {**extra, "model_type": "albert", **data}

    def save(self, directory: str | Path) -> Path:
        """Write config.json into `directory`; returns its path."""
        path = Path(directory) / "config.json"
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path


def labels_by_id(id2label: Any) -> dict[int, str]:
    """id2label as config.json holds it (string keys) -> {int: str}; ConfigError for anything else."""
    if not isinstance(id2label, dict):
        raise ConfigError(f"invalid ALBERT config: id2label must be an object of id -> label name, got "
                          f"{type(id2label).__name__}")
    labels, keys = {}, {}
    for key, value in id2label.items():
        if is_integer(key, numpy=False) and key >= 0:  # built in Python, not read from JSON
            key = str(key)
        if not (isinstance(key, str) and LABEL_ID.fullmatch(key)):
            raise ConfigError(f"invalid ALBERT config: id2label key {key!r} is not a label id (0, 1, ...)")
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"invalid ALBERT config: id2label[{key!r}] must be a label name, got {value!r}")
        if int(key) in labels:
            raise ConfigError(f"invalid ALBERT config: id2label keys {keys[int(key)]!r} and {key!r} name the same "
                              f"label id {int(key)}; keep one")
        labels[int(key)], keys[int(key)] = str(value), key
    return labels  # numbered 0..n-1: __post_init__'s problems


def float_problems(config: AlbertConfig) -> list[str]:
    """Float fields: finite, and within the range where they mean something (NaN compares False to everything,
    so each test is written to fail on NaN)."""
    problems = []
    eps = config.layer_norm_eps
    if not is_number(eps) or not (math.isfinite(eps) and eps > 0):
        problems.append(f"layer_norm_eps must be a finite positive number, got {eps!r}")
    for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout_prob"):
        value = getattr(config, name)
        if value is None and name == "classifier_dropout_prob":
            continue
        if not is_number(value) or not 0 <= value <= 1:
            problems.append(f"{name} must be a probability in [0, 1], got {value!r}")
    value = config.initializer_range
    if not is_number(value) or not (math.isfinite(value) and value >= 0):
        problems.append(f"initializer_range must be a finite number >= 0, got {value!r}")
    return problems


def is_number(value: Any) -> bool:
    """An int or a float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# optimum's TasksManager mapping (its `--task auto`): the head class a checkpoint was saved from -> the task, as
# each task's config names its classes (TaskConfig.architectures)
ARCHITECTURE_TASKS = task_table(lambda spec: [(name, spec.name) for name in spec.architectures])


class TaskDetectionError(UnknownTaskError, ExportError):
    """--task was left out and config.json's `architectures` name no single task."""


def task_from_architectures(config: AlbertConfig, source: str | Path) -> str:
    """The task of the one Albert* head class config.json names, or TaskDetectionError naming the choices."""
    named = config.extra.get("architectures") or []
    if not isinstance(named, list) or not all(isinstance(name, str) for name in named):
        raise ConfigError(f"invalid ALBERT config: {Path(source) / 'config.json'}'s architectures must be a list of "
                          f"class names (e.g. [\"AlbertForMaskedLM\"]), got {json.dumps(named)}; fix it, or pass --task")
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
