"""The seven tasks: one TaskConfig per task (optimum's OnnxConfig is the model) holds all that is known of a task.

Both sides read it: the build side (albert_export: the PyTorch head, the architectures config.json names, the
validation shapes; calibration: how an example becomes tokenizer input, the INT8 report's metric) and the runtime
(the head module, the parameters, the outputs and their axes). Every table of task knowledge is derived from TASKS
when it is read (`task_table`), so adding a task is one entry here plus the head code it names.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import UnknownTaskError  # noqa: F401  (its old home: albert_export imports it from here)

# optimum's dimension names, so its validate_model_outputs and ORTModelFor* accept our graphs
BATCH, SEQUENCE, CHOICES = "batch_size", "sequence_length", "num_choices"
DYNAMIC_DIMS = (BATCH, CHOICES, SEQUENCE)  # symbolic in model.onnx; the others (vocab, labels, hidden) are fixed
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
# every task, on request (albert-export --output-hidden-states / --output-attentions), after the task's outputs:
# hidden_states (L+1, batch, sequence, H) and attentions (L*inner_group_num, batch, heads, sequence, sequence)
OPTIONAL_OUTPUTS = ("hidden_states", "attentions")
# validation runs the graph against the reference at each (batch, sequence), sequence capped at the model's
# positions (optimum's odd shapes); inputs with a choices axis get 3 choices at batch 1 and 2 otherwise
VALIDATION_SIZES = ((1, 1), (3, 7), (3, 33), (1, None))  # None: the model's maximum
DUMMY_CHOICES = 2


@dataclass(frozen=True)
class TaskConfig:
    """All that is known of one task; the ~8 tables that held it before read it from here."""

    name: str
    aliases: tuple[str, ...]
    outputs: tuple[str, ...]  # ONNX output names, in order
    output_dims: tuple[tuple[str, ...], ...]  # symbolic dims per output
    head: str  # runtime.tasks.<head>: its settings / preprocess / postprocess stages
    torch_head: str  # albert_export.modeling.<torch_head>: the PyTorch reference head
    architectures: tuple[str, ...]  # transformers' config.json `architectures` that mean this task (--task auto)
    parameters: frozenset[str]  # the HF pipeline's keyword arguments the head takes (values: tasks.common checks)
    input_dims: tuple[str, ...] = (BATCH, SEQUENCE)  # every input's symbolic dims
    outputs_on_request: tuple[str, ...] = ()  # outputs a bundle has only when asked (albert-export --pooler-output)
    pairs: bool = False  # takes text pairs: the tokenizer must give the pair's second token type
    calibration: str = "text"  # how a calibration example becomes tokenizer input: calibration.data.ENCODINGS
    accuracy: str | None = "top1"  # the INT8 report's metric (calibration.quantize.METRICS); None: max abs diff only
    hf_aliases: tuple[str, ...] = ()  # transformers' pipeline() names of the task that are not albert-export's

    @property
    def multiple_choice(self) -> bool:
        """Inputs (batch, choices, sequence): the choices are folded into the batch in the encoder."""
        return CHOICES in self.input_dims

    def input_shape(self, batch: int, sequence: int, choices: int = DUMMY_CHOICES) -> tuple[int, ...]:
        """The inputs' shape at these sizes (the dims the task's inputs have, in order)."""
        sizes = {BATCH: batch, SEQUENCE: sequence, CHOICES: choices}
        return tuple(sizes[dim] for dim in self.input_dims)

    def validation_shapes(self, max_positions: int) -> list[tuple[int, ...]]:
        """The input shapes export validation compares the graph with the reference at (VALIDATION_SIZES)."""
        shapes: list[tuple[int, ...]] = []
        for batch, sequence in VALIDATION_SIZES:
            sequence = max_positions if sequence is None else min(sequence, max_positions)
            shape = self.input_shape(batch, sequence, choices=3 if batch == 1 else 2)
            if shape not in shapes:
                shapes.append(shape)
        return shapes


TASKS: dict[str, TaskConfig] = {
    spec.name: spec
    for spec in (
        TaskConfig(
            "fill-mask", ("mlm",), ("logits",), ((BATCH, SEQUENCE, "vocab"),),
            head="fill_mask", torch_head="AlbertForMaskedLM", architectures=("AlbertForMaskedLM",),
            parameters=frozenset({"top_k", "targets", "truncation", "tokenizer_kwargs"}),
        ),
        TaskConfig(
            "text-classification", ("sequence-classification", "cls"), ("logits",), ((BATCH, "labels"),),
            head="text_classification", torch_head="AlbertForSequenceClassification",
            architectures=("AlbertForSequenceClassification",), pairs=True, hf_aliases=("sentiment-analysis",),
            parameters=frozenset({"top_k", "function_to_apply", "return_all_scores", "truncation", "max_length",
                                   "padding"}),
        ),
        TaskConfig(
            "token-classification", ("ner",), ("logits",), ((BATCH, SEQUENCE, "labels"),),
            head="token_classification", torch_head="AlbertForTokenClassification",
            architectures=("AlbertForTokenClassification",),
            parameters=frozenset({"ignore_labels", "grouped_entities", "ignore_subwords", "aggregation_strategy",
                                   "offset_mapping", "is_split_into_words", "stride", "delimiter"}),
        ),
        TaskConfig(
            "question-answering", ("qa",), ("start_logits", "end_logits"), ((BATCH, SEQUENCE), (BATCH, SEQUENCE)),
            head="question_answering", torch_head="AlbertForQuestionAnswering",
            architectures=("AlbertForQuestionAnswering",), pairs=True, calibration="question", accuracy="span",
            parameters=frozenset({"question", "context", "top_k", "topk", "doc_stride", "max_answer_len",
                                   "max_seq_len", "max_question_len", "handle_impossible_answer", "align_to_words",
                                   "padding"}),
        ),
        TaskConfig(
            "multiple-choice", ("mc",), ("logits",), ((BATCH, CHOICES),),
            head="multiple_choice", torch_head="AlbertForMultipleChoice", architectures=("AlbertForMultipleChoice",),
            input_dims=(BATCH, CHOICES, SEQUENCE), pairs=True, calibration="choices",
            parameters=frozenset({"top_k", "truncation", "max_length"}),
        ),
        TaskConfig(
            "feature-extraction", ("features",), ("last_hidden_state", "pooler_output"),
            ((BATCH, SEQUENCE, "hidden"), (BATCH, "hidden")),
            head="feature_extraction", torch_head="AlbertForFeatureExtraction", architectures=("AlbertModel",),
            outputs_on_request=("pooler_output",), accuracy=None,
            parameters=frozenset({"pooling", "truncation", "return_tensors", "tokenize_kwargs",
                                   "output_hidden_states", "hidden_state_layer", "output_attentions"}),
        ),
        TaskConfig(
            "pretraining", (), ("prediction_logits", "sop_logits"), ((BATCH, SEQUENCE, "vocab"), (BATCH, "2")),
            head="pretraining", torch_head="AlbertForPreTraining", architectures=("AlbertForPreTraining",),
            pairs=True, parameters=frozenset({"top_k", "targets", "truncation", "max_length"}),
        ),
    )
}
TaskSpec = TaskConfig  # its name before it held the whole task


class TaskTable(Mapping):
    """A read-only table derived from TASKS each time it is read, so it can never disagree with the configs (a
    task added to TASKS is in every table at once)."""

    def __init__(self, entries: Callable[[TaskConfig], Iterable[tuple[Any, Any]]]):
        self._entries = entries

    def _table(self) -> dict:
        return {key: value for spec in TASKS.values() for key, value in self._entries(spec)}

    def __getitem__(self, key: Any) -> Any:
        return self._table()[key]

    def __iter__(self) -> Iterator:
        return iter(self._table())

    def __len__(self) -> int:
        return len(self._table())

    def __repr__(self) -> str:
        return f"TaskTable({self._table()!r})"


def task_table(entries: Callable[[TaskConfig], Iterable[tuple[Any, Any]]]) -> TaskTable:
    """A table of task knowledge read off every TaskConfig: entries(spec) gives its (key, value) pairs."""
    return TaskTable(entries)


# task outputs a bundle has only when asked (albert-export --pooler-output): optimum's feature-extraction config
# has last_hidden_state alone, and its validate_model_outputs refuses a graph with any other output
TASK_OUTPUTS_ON_REQUEST = tuple(dict.fromkeys(name for spec in TASKS.values() for name in spec.outputs_on_request))


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
    return TASKS[task].input_dims


def dynamic_axes(dims) -> dict[int, str]:
    """{axis: name} of the dims that vary per call, as torch.onnx.export's dynamic_axes takes them."""
    return {axis: dim for axis, dim in enumerate(dims) if dim in DYNAMIC_DIMS}
