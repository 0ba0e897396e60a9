"""The INT8 gate's data and measure: held-out examples (never calibrated on) and task-level agreement with fp32.

What a user of a task sees is its top-1 answer, so the INT8 graph is judged on how often its answer is the fp32
graph's on examples it was not calibrated on: the label (text and token classification, multiple choice), the
predicted token at every position (fill-mask), the start, the end and the best span (question answering).
A broken quantization (ranges off by a factor, a wrong scale) moves the top-1 answers; atol on random ids does not
see it (the tolerance must admit the int8 noise of a good graph, 0.78 on the default model's logits).

Held-out examples: those of the calibration data not calibrated on, topped up to HELD_OUT_SAMPLES from the built-in
held-out text (heldout.jsonl: 64 sentences of Natsume Soseki's *Botchan*, Project Gutenberg, public domain, from
the part of the book the embedded default model was not trained on), leaving out any equal to a calibration one.
"""
from __future__ import annotations

from pathlib import Path

from .data import Example, load_examples, select
from .errors import CalibrationError

BUILTIN_HELD_OUT = Path(__file__).with_name("heldout.jsonl")
HELD_OUT_SAMPLES = 64

# The smallest share of held-out answers the INT8 graph must give as fp32 does, per task and measure. Measured
# (percentile calibration on the built-in data, 64 held-out examples, unrolled and loop): the embedded default
# model's fill-mask 0.985; the tests' random-weight 4-layer models (3 seeds) fill-mask 0.97-0.98, labels 0.98-1.0,
# QA start 0.94-1.0, end 0.98-1.0, span 0.92-1.0, pretraining tokens 0.94-0.97, multiple choice 0.80-0.95 (4 near
# tied random scores); with every activation range shrunk 10x (a broken quantization) 0.0-0.52, multiple choice
# 0.23 (chance 0.25). The thresholds sit between the two.
MIN_AGREEMENT: dict[str, dict[str, float]] = {
    "fill-mask": {"logits": 0.9},
    "text-classification": {"logits": 0.9},
    "token-classification": {"logits": 0.9},
    "multiple-choice": {"logits": 0.7},
    "question-answering": {"start_logits": 0.85, "end_logits": 0.85, "span": 0.8},
    "pretraining": {"prediction_logits": 0.9, "sop_logits": 0.9},
    "feature-extraction": {},  # no answer to agree on: atol against PyTorch is its only check
}


def held_out_examples(data: list[Example], calibrated: list[Example], task: str,
                      samples: int = HELD_OUT_SAMPLES) -> tuple[list[Example], str]:
    """(up to `samples` examples never calibrated on, where they come from in words). For multiple choice the
    built-in sentences become 4-way choices (a sentence's first half; its own second half and three others')."""
    seen = set(calibrated)
    own = select([example for example in data if example not in seen], samples) if len(data) > len(seen) else []
    builtin = load_examples(BUILTIN_HELD_OUT)
    if task == "multiple-choice":
        builtin = _choices(builtin)
    builtin = [example for example in builtin if example not in seen and example not in own]
    builtin = builtin[:max(0, samples - len(own))]
    if not own and not builtin:
        raise CalibrationError("no held-out examples to check the INT8 graph on: the calibration data holds the "
                               "built-in held-out sentences and nothing else; pass other --calibration-data")
    parts = [f"{len(own)} held-out examples of the calibration data"] if own else []
    if builtin:
        parts.append(f"{len(builtin)} built-in held-out sentences")
    return own + builtin, " and ".join(parts) + " (none calibrated on)"


def _choices(sentences: list[Example], count: int = 4) -> list[Example]:
    halves = []
    for sentence in sentences:
        words = sentence.text.split()
        halves.append((" ".join(words[:len(words) // 2]), " ".join(words[len(words) // 2:])))
    return [Example(prompt, choices=tuple(halves[(i + k) % len(halves)][1] for k in range(count)))
            for i, (prompt, _) in enumerate(halves)]


def task_agreement(report: dict, task: str) -> dict[str, float]:
    """The measures MIN_AGREEMENT names for `task`, read off calibration.accuracy_report's report."""
    measures = {}
    for name in MIN_AGREEMENT[task]:
        measures[name] = report["qa_span_agreement"] if name == "span" else report["top1_agreement"][name]
    return measures


def thresholds(task: str, min_agreement: float | None = None) -> dict[str, float]:
    """The task's thresholds; min_agreement (--min-agreement, a share in [0, 1]) replaces each of them."""
    check_min_agreement(min_agreement)
    return {name: (value if min_agreement is None else float(min_agreement))
            for name, value in MIN_AGREEMENT[task].items()}


def check_min_agreement(min_agreement: float | None) -> None:
    """Refuse a --min-agreement that is not a share in [0, 1] (a bool or NaN included), as CalibrationError."""
    if min_agreement is not None and (isinstance(min_agreement, bool) or not 0.0 <= min_agreement <= 1.0):
        raise CalibrationError(f"--min-agreement must be a share between 0 and 1 (e.g. 0.9), got {min_agreement!r}")


def worst_shortfall(measured: dict[str, float], minimum: dict[str, float]) -> str | None:
    """The measure furthest below its threshold, None when every one meets it."""
    failing = [(measured[name] - minimum[name], name) for name in minimum if measured[name] < minimum[name]]
    return min(failing)[1] if failing else None
