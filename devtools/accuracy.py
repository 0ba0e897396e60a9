"""Accuracy oracle: held-out masked-LM and sentence-order accuracy of a model or bundle, and the agreement
of two bundles (e.g. fp32 against fp16 or INT8) on the same held-out examples.

A predictor is any function (input_ids, attention_mask, token_type_ids) -> (MLM logits (B, S, V),
SOP logits (B, 2) or None), numpy in and out: the PyTorch model during training, onnxruntime for a bundle.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from . import pretraining_data as data

Predictor = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, "np.ndarray | None"]]
HELDOUT_TEXT = Path(__file__).resolve().parents[1] / "albert_export" / "default_model" / "heldout.txt"
BATCH_SIZE = 16


class AccuracyError(ValueError):
    """Two bundles or a bundle and its examples that cannot be compared."""


def batches(examples: data.Examples, batch_size: int = BATCH_SIZE) -> Iterator[data.Examples]:
    """Row batches, each trimmed to its longest row (no predictor sees more padding than needed)."""
    for start in range(0, len(examples), batch_size):
        part = examples.subset(slice(start, start + batch_size))
        width = int(part.attention_mask.sum(axis=1).max())
        yield part.trimmed(width)


def masked_predictions(predict: Predictor, masked: data.Examples, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """(true ids (M,), top-k predicted ids (M, k)) at every masked position, in row-major order."""
    truths, tops = [], []
    for part in batches(masked):
        logits, _ = predict(part.input_ids, part.attention_mask, part.token_type_ids)
        where = part.mlm_labels != data.IGNORE
        scores = np.asarray(logits, dtype=np.float32)[where]  # (m, V)
        tops.append(np.argsort(-scores, axis=-1, kind="stable")[:, :k])
        truths.append(part.mlm_labels[where])
    return np.concatenate(truths), np.concatenate(tops)


def sop_predictions(predict: Predictor, plain: data.Examples) -> np.ndarray | None:
    """Predicted sentence-order labels (N,), or None when the predictor has no SOP head."""
    predicted = []
    for part in batches(plain):
        _, sop = predict(part.input_ids, part.attention_mask, part.token_type_ids)
        if sop is None:
            return None
        predicted.append(np.asarray(sop, dtype=np.float32).argmax(axis=-1))
    return np.concatenate(predicted)


def mlm_accuracy(predict: Predictor, masked: data.Examples) -> dict:
    truths, tops = masked_predictions(predict, masked)
    return {
        "top1": round(float((tops[:, 0] == truths).mean()), 4),
        "top5": round(float((tops == truths[:, None]).any(axis=1).mean()), 4),
        "masked_tokens": int(truths.size),
    }


def sop_accuracy(predict: Predictor, plain: data.Examples) -> dict | None:
    predicted = sop_predictions(predict, plain)
    if predicted is None:
        return None
    return {"accuracy": round(float((predicted == plain.sop_labels).mean()), 4), "examples": len(plain)}


def unigram_baseline(counts: np.ndarray, masked: data.Examples) -> dict:
    """Always predicting the training split's most frequent tokens: top-1 and top-5 at the masked positions."""
    ranked = np.argsort(-counts, kind="stable")[:5]
    truths = masked.mlm_labels[masked.mlm_labels != data.IGNORE]
    return {
        "top1": round(float((truths == ranked[0]).mean()), 4),
        "top5": round(float(np.isin(truths, ranked).mean()), 4),
        "tokens": [int(t) for t in ranked],
        "masked_tokens": int(truths.size),
    }


def heldout_texts(texts: list[str] | None = None) -> list[str]:
    """The given texts, or the default model's held-out sentences (the book's last 10%, never trained on)."""
    if texts is not None:
        texts = [text for text in texts if text.strip()]
        if not texts:
            raise AccuracyError("no non-empty text to evaluate on")
        return texts
    if not HELDOUT_TEXT.is_file():
        raise AccuracyError(f"{HELDOUT_TEXT} is missing; pass texts=[...] or re-run python -m devtools.train")
    return [line for line in HELDOUT_TEXT.read_text().splitlines() if line.strip()]


def bundle_predictor(bundle_dir: str | Path) -> tuple[Predictor, "object", int]:
    """(predictor over the bundle's model.onnx with onnxruntime on CPU, its tokenizer, its max length)."""
    import onnxruntime
    from tokenizers import Tokenizer

    from runtime.bundle import load_bundle

    bundle = load_bundle(bundle_dir)
    task = bundle.manifest.task
    if task == "fill-mask":
        wanted = ["logits"]
    elif task == "pretraining":
        wanted = ["prediction_logits", "sop_logits"]
    else:
        raise AccuracyError(f"bundle {bundle_dir} is a {task} bundle; the oracle needs fill-mask or pretraining")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 2
    session = onnxruntime.InferenceSession(str(bundle.model_path), options, providers=["CPUExecutionProvider"])
    input_names = {node.name for node in session.get_inputs()}

    def predict(input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray):
        given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        outputs = session.run(wanted, {name: array for name, array in given.items() if name in input_names})
        return outputs[0], outputs[1] if len(outputs) > 1 else None

    max_length = min(bundle.manifest.tokenizer.max_length,
                     int(bundle.config.get("max_position_embeddings", bundle.manifest.tokenizer.max_length)))
    return predict, Tokenizer.from_file(str(bundle.tokenizer_path)), max_length


def bundle_accuracy(bundle_dir: str | Path, texts: list[str] | None = None) -> dict:
    """Held-out masked-LM top-1/top-5 of a bundle against the true tokens, and SOP accuracy (pretraining)."""
    predict, tokenizer, max_length = bundle_predictor(bundle_dir)
    plain, masked = data.evaluation_examples(tokenizer, heldout_texts(texts), max_length)
    return {"mlm": mlm_accuracy(predict, masked), "sop": sop_accuracy(predict, plain)}


def bundle_agreement(bundle_a: str | Path, bundle_b: str | Path, texts: list[str] | None = None) -> dict:
    """How often two bundles of one model agree on held-out examples: the top-1 token at every masked
    position, and the sentence-order decision (when both are pretraining bundles). Each bundle's accuracy
    against the true tokens is reported too, so a drop in agreement can be read as a drop in accuracy."""
    predict_a, tokenizer_a, length_a = bundle_predictor(bundle_a)
    predict_b, tokenizer_b, length_b = bundle_predictor(bundle_b)
    if tokenizer_a.get_vocab() != tokenizer_b.get_vocab():
        raise AccuracyError(f"{bundle_a} and {bundle_b} have different vocabularies; compare bundles of one model")
    plain, masked = data.evaluation_examples(tokenizer_a, heldout_texts(texts), min(length_a, length_b))
    truths, tops_a = masked_predictions(predict_a, masked)
    _, tops_b = masked_predictions(predict_b, masked)
    sop_a, sop_b = sop_predictions(predict_a, plain), sop_predictions(predict_b, plain)
    both_sop = sop_a is not None and sop_b is not None

    def scores(tops: np.ndarray, sop: np.ndarray | None) -> dict:
        return {
            "mlm_top1": round(float((tops[:, 0] == truths).mean()), 4),
            "mlm_top5": round(float((tops == truths[:, None]).any(axis=1).mean()), 4),
            "sop_accuracy": None if sop is None else round(float((sop == plain.sop_labels).mean()), 4),
        }

    return {
        "fill_mask_top1_agreement": round(float((tops_a[:, 0] == tops_b[:, 0]).mean()), 4),
        "sop_agreement": round(float((sop_a == sop_b).mean()), 4) if both_sop else None,
        "masked_tokens": int(truths.size),
        "examples": len(plain),
        "a": scores(tops_a, sop_a),
        "b": scores(tops_b, sop_b),
    }
