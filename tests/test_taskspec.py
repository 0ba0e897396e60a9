"""One task config per task (runtime.taskspec.TaskConfig): every table of task knowledge is read off TASKS, so a
task added there is in all of them at once, on the torch side and the runtime side."""
from __future__ import annotations

from dataclasses import replace

import pytest

from runtime.taskspec import BATCH, CHOICES, SEQUENCE, TASKS, TaskConfig


@pytest.fixture
def added_task(monkeypatch):
    spec = replace(TASKS["multiple-choice"], name="ranking", aliases=("rank",), architectures=("AlbertForRanking",),
                   hf_aliases=("choice-ranking",))
    monkeypatch.setitem(TASKS, spec.name, spec)
    return spec


def test_a_task_added_to_tasks_is_in_every_table(added_task):
    from albert_export.config import ARCHITECTURE_TASKS, AlbertConfig, task_from_architectures
    from albert_export.modeling import TASK_MODELS, AlbertForMultipleChoice
    from calibration.data import ENCODINGS
    from calibration.quantize import METRICS
    from runtime.pipelines import HEAD_MODULES, HF_TASK_ALIASES, head_for
    from runtime.taskspec import canonical_task, input_dims

    assert HEAD_MODULES["ranking"] == "multiple_choice" and head_for("ranking").CALL is not None
    assert TASK_MODELS["ranking"] is AlbertForMultipleChoice
    assert ARCHITECTURE_TASKS["AlbertForRanking"] == "ranking"
    assert task_from_architectures(AlbertConfig(extra={"architectures": ["AlbertForRanking"]}), ".") == "ranking"
    assert HF_TASK_ALIASES["choice-ranking"] == "ranking"
    assert canonical_task("rank") == "ranking" and input_dims("ranking") == (BATCH, CHOICES, SEQUENCE)
    assert added_task.calibration in ENCODINGS and added_task.accuracy in METRICS


def test_every_task_config_is_whole():
    from albert_export import modeling
    from calibration.data import ENCODINGS
    from calibration.quantize import METRICS
    from runtime.pipelines import head_for

    small = modeling.AlbertConfig(vocab_size=10, embedding_size=4, hidden_size=8, num_hidden_layers=1,
                                  num_attention_heads=2, intermediate_size=8, max_position_embeddings=8)
    for spec in TASKS.values():
        assert isinstance(spec, TaskConfig) and len(spec.outputs) == len(spec.output_dims), spec.name
        model = modeling.model_for_task(small, spec.name)
        assert type(model).__name__ == spec.torch_head and model.task == spec.name
        assert head_for(spec.name).PARAMETERS == spec.parameters
        assert spec.calibration in ENCODINGS and spec.accuracy in METRICS
        assert set(spec.outputs_on_request) <= set(spec.outputs)


def test_validation_shapes_follow_the_input_dims():
    assert TASKS["fill-mask"].validation_shapes(512) == [(1, 1), (3, 7), (3, 33), (1, 512)]
    assert TASKS["multiple-choice"].validation_shapes(20) == [(1, 3, 1), (3, 2, 7), (3, 2, 20), (1, 3, 20)]
    assert TASKS["question-answering"].validation_shapes(7) == [(1, 1), (3, 7), (1, 7)]
    assert TASKS["multiple-choice"].input_shape(1, 4) == (1, 2, 4) and TASKS["pretraining"].input_shape(2, 3) == (2, 3)
