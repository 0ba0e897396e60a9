"""The seven tasks, their aliases and their ONNX outputs: the contract both sides share."""
from __future__ import annotations

from dataclasses import dataclass

from .errors import UnknownTaskError  # noqa: F401  (its old home: albert_export imports it from here)

# optimum's dimension names, so its validate_model_outputs and ORTModelFor* accept our graphs
BATCH, SEQUENCE, CHOICES = "batch_size", "sequence_length", "num_choices"
DYNAMIC_DIMS = (BATCH, CHOICES, SEQUENCE)  # symbolic in model.onnx; the others (vocab, labels, hidden) are fixed


@dataclass(frozen=True)
class TaskSpec:
    name: str
    aliases: tuple[str, ...]
    outputs: tuple[str, ...]
    output_dims: tuple[tuple[str, ...], ...]  # symbolic dims per output
    multiple_choice: bool = False


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("fill-mask", ("mlm",), ("logits",), ((BATCH, SEQUENCE, "vocab"),)),
        TaskSpec(
            "text-classification",
            ("sequence-classification", "cls"),
            ("logits",),
            ((BATCH, "labels"),),
        ),
        TaskSpec(
            "token-classification", ("ner",), ("logits",), ((BATCH, SEQUENCE, "labels"),)
        ),
        TaskSpec(
            "question-answering",
            ("qa",),
            ("start_logits", "end_logits"),
            ((BATCH, SEQUENCE), (BATCH, SEQUENCE)),
        ),
        TaskSpec(
            "multiple-choice", ("mc",), ("logits",), ((BATCH, CHOICES),), multiple_choice=True
        ),
        TaskSpec(
            "feature-extraction",
            ("features",),
            ("last_hidden_state", "pooler_output"),
            ((BATCH, SEQUENCE, "hidden"), (BATCH, "hidden")),
        ),
        TaskSpec(
            "pretraining",
            (),
            ("prediction_logits", "sop_logits"),
            ((BATCH, SEQUENCE, "vocab"), (BATCH, "2")),
        ),
    )
}

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
# every task, on request (albert-export --output-hidden-states / --output-attentions), after the task's outputs:
# hidden_states (L+1, batch, sequence, H) and attentions (L*inner_group_num, batch, heads, sequence, sequence)
OPTIONAL_OUTPUTS = ("hidden_states", "attentions")
# task outputs a bundle has only when asked (albert-export --pooler-output): optimum's feature-extraction config
# has last_hidden_state alone, and its validate_model_outputs refuses a graph with any other output
TASK_OUTPUTS_ON_REQUEST = ("pooler_output",)


def canonical_task(name: str) -> str:
    """'qa' -> 'question-answering'; raises UnknownTaskError naming the valid choices."""
    key = name.strip().lower().replace("_", "-")
    for spec in TASKS.values():
        if key == spec.name or key in spec.aliases:
            return spec.name
    choices = ", ".join(f"{s.name} ({', '.join(s.aliases)})" if s.aliases else s.name for s in TASKS.values())
    raise UnknownTaskError(f"unknown task {name!r}; choose one of: {choices}")


def input_dims(task: str) -> tuple[str, ...]:
    """The inputs' symbolic dims for a task, by its canonical name (canonical_task has given it)."""
    if TASKS[task].multiple_choice:
        return (BATCH, CHOICES, SEQUENCE)
    return (BATCH, SEQUENCE)


def dynamic_axes(dims) -> dict[int, str]:
    """{axis: name} of the dims that vary per call, as torch.onnx.export's dynamic_axes takes them."""
    return {axis: dim for axis, dim in enumerate(dims) if dim in DYNAMIC_DIMS}
