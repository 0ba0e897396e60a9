"""The seven tasks, their aliases and their ONNX outputs: the contract both sides share."""
from __future__ import annotations

from dataclasses import dataclass


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
        TaskSpec("fill-mask", ("mlm",), ("logits",), (("batch", "sequence", "vocab"),)),
        TaskSpec(
            "text-classification",
            ("sequence-classification", "cls"),
            ("logits",),
            (("batch", "labels"),),
        ),
        TaskSpec(
            "token-classification", ("ner",), ("logits",), (("batch", "sequence", "labels"),)
        ),
        TaskSpec(
            "question-answering",
            ("qa",),
            ("start_logits", "end_logits"),
            (("batch", "sequence"), ("batch", "sequence")),
        ),
        TaskSpec(
            "multiple-choice", ("mc",), ("logits",), (("batch", "choices"),), multiple_choice=True
        ),
        TaskSpec(
            "feature-extraction",
            ("features",),
            ("last_hidden_state", "pooler_output"),
            (("batch", "sequence", "hidden"), ("batch", "hidden")),
        ),
        TaskSpec(
            "pretraining",
            (),
            ("prediction_logits", "sop_logits"),
            (("batch", "sequence", "vocab"), ("batch", "2")),
        ),
    )
}

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
# every task, on request (albert-export --output-hidden-states / --output-attentions), after the task's outputs:
# hidden_states (L+1, batch, sequence, H) and attentions (L*inner_group_num, batch, heads, sequence, sequence)
OPTIONAL_OUTPUTS = ("hidden_states", "attentions")


class UnknownTaskError(ValueError):
    pass


def canonical_task(name: str) -> str:
    """'qa' -> 'question-answering'; raises UnknownTaskError naming the valid choices."""
    key = name.strip().lower().replace("_", "-")
    for spec in TASKS.values():
        if key == spec.name or key in spec.aliases:
            return spec.name
    choices = ", ".join(f"{s.name} ({', '.join(s.aliases)})" if s.aliases else s.name for s in TASKS.values())
    raise UnknownTaskError(f"unknown task {name!r}; choose one of: {choices}")


def input_dims(task: str) -> tuple[str, ...]:
    if TASKS[canonical_task(task)].multiple_choice:
        return ("batch", "choices", "sequence")
    return ("batch", "sequence")
