"""Train the embedded default model: a Unigram tokenizer and a tiny ALBERT (masked LM + sentence order).

    python -m devtools.train [--corpus devtools/corpus/botchan.txt] [--output albert_export/default_model]

Seeded and reproducible on one machine: the same seed and thread count give the same weights. The book's
last 10% of lines are held out; the report gives held-out MLM top-1/top-5 and SOP accuracy, next to the
baseline that always predicts the training split's most frequent tokens.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, models, trainers
from tqdm import tqdm

from albert_export.config import AlbertConfig
from albert_export.modeling import AlbertForPreTraining
from albert_export.tokenizer import albert_special_token, apply_albert_layout, apply_albert_templates

from . import pretraining_data as data

DEFAULT_CORPUS = Path(__file__).resolve().parent / "corpus" / "botchan.txt"
DEFAULT_OUTPUT = Path(__file__).resolve().parents[1] / "albert_export" / "default_model"
TIED_ALIASES = ("predictions.decoder.weight", "predictions.decoder.bias")


@dataclass
class TrainingSettings:
    seed: int = 0
    vocab_size: int = 8000
    max_length: int = 128  # max_position_embeddings; the last long_fraction of the steps use it
    short_length: int = 64  # the other steps use shorter sequences (BERT's recipe): cheaper, so more steps
    long_fraction: float = 0.2
    batch_size: int = 32
    steps: int = 7000
    learning_rate: float = 2e-3
    warmup_fraction: float = 0.06
    weight_decay: float = 0.01
    mask_fraction: float = 0.15
    threads: int = 1  # on a shared 2-core machine one thread is faster than two fighting for cores


MODEL_SHAPE = dict(
    embedding_size=128, hidden_size=128, num_hidden_layers=4, num_hidden_groups=1, num_attention_heads=4,
    intermediate_size=512, hidden_act="gelu_new", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
)


def tiny_config(vocab_size: int, max_length: int, **overrides) -> AlbertConfig:
    """The default model's shape: one shared layer group used 4 times, embeddings and hidden states of width 128."""
    return AlbertConfig(vocab_size=vocab_size, max_position_embeddings=max_length, **{**MODEL_SHAPE, **overrides})


def train_tokenizer(lines: list[str], vocab_size: int) -> Tokenizer:
    """A Unigram tokenizer laid out as Hugging Face's ALBERT tokenizer.json (AlbertConverter)."""
    tokenizer = apply_albert_layout(Tokenizer(models.Unigram()))
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=data.SPECIAL_TOKENS, unk_token="<unk>", show_progress=False,
    )
    tokenizer.train_from_iterator(lines, trainer=trainer)
    tokenizer = canonical_vocabulary(tokenizer)
    for token, expected in zip(data.SPECIAL_TOKENS, range(len(data.SPECIAL_TOKENS))):
        if tokenizer.token_to_id(token) != expected:
            raise RuntimeError(f"the trainer put {token} at id {tokenizer.token_to_id(token)}, not {expected}")
    apply_albert_templates(tokenizer)
    tokenizer.add_special_tokens([albert_special_token(token) for token in data.SPECIAL_TOKENS])
    return tokenizer


def canonical_vocabulary(tokenizer: Tokenizer, decimals: int = 8, tail_window: float = 0.01) -> Tokenizer:
    """The trained pieces in a fixed order, so the same corpus gives the same ids every run.

    The Unigram trainer sums in hash-map order: its scores differ in the 14th digit from run to run (rounded
    away here), and the rare single characters it adds at the bottom get their score slots in hash-map order
    (given here alphabetically). Then everything is sorted by score and text."""
    state = json.loads(tokenizer.to_str())
    count = len(data.SPECIAL_TOKENS)
    special = state["model"]["vocab"][:count]
    pieces = [[piece, round(score, decimals)] for piece, score in state["model"]["vocab"][count:]]
    lowest = min(score for _, score in pieces)
    bottom = [item for item in pieces if len(item[0]) == 1 and item[1] <= lowest + tail_window]
    slots = sorted((score for _, score in bottom), reverse=True)
    for item, piece, score in zip(bottom, sorted(piece for piece, _ in bottom), slots):
        item[0], item[1] = piece, score
    state["model"]["vocab"] = special + sorted(pieces, key=lambda item: (-item[1], item[0]))
    return Tokenizer.from_str(json.dumps(state))


def tokenizer_config(max_length: int) -> dict:
    """tokenizer_config.json for transformers' AlbertTokenizerFast."""
    return {
        "tokenizer_class": "AlbertTokenizer",
        "do_lower_case": True,
        "remove_space": True,
        "keep_accents": False,
        "model_max_length": max_length,
        "bos_token": "[CLS]", "eos_token": "[SEP]", "unk_token": "<unk>", "sep_token": "[SEP]",
        "pad_token": "<pad>", "cls_token": "[CLS]", "mask_token": "[MASK]",
    }


def linear_schedule(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def pretraining_losses(model: AlbertForPreTraining,
                       batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(MLM loss, SOP loss); the vocabulary projection runs only at the masked positions."""
    hidden, mask = model.albert.embed(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    hidden = model.albert.encoder(hidden, mask)  # (B, S, H)
    predicted = batch["mlm_labels"] != data.IGNORE
    logits = model.predictions(hidden[predicted])  # (M, V)
    mlm = torch.nn.functional.cross_entropy(logits, batch["mlm_labels"][predicted])
    sop = torch.nn.functional.cross_entropy(model.sop_classifier(model.albert.pool(hidden)), batch["sop_labels"])
    return mlm, sop


def as_tensors(examples: data.Examples) -> dict[str, torch.Tensor]:
    return {
        "input_ids": torch.from_numpy(examples.input_ids),
        "attention_mask": torch.from_numpy(examples.attention_mask),
        "token_type_ids": torch.from_numpy(examples.token_type_ids),
        "sop_labels": torch.from_numpy(examples.sop_labels),
        "mlm_labels": torch.from_numpy(examples.mlm_labels),
    }


def epoch_batches(encoded: list[list[int]], settings: TrainingSettings, vocab_size: int,
                  rng: np.random.Generator, length: int) -> list[dict[str, torch.Tensor]]:
    """A fresh chunking, sentence-order swap and masking of the training sentences, shuffled into batches."""
    pairs = data.segment_pairs(encoded, length, rng)
    order = rng.permutation(len(pairs))
    batches = []
    for start in range(0, len(order), settings.batch_size):
        chosen = [pairs[i] for i in order[start : start + settings.batch_size]]
        examples = data.mask_tokens(data.pack_pairs(chosen, rng), rng, vocab_size, settings.mask_fraction)
        batches.append(as_tensors(examples))
    return batches


def torch_logits(model: AlbertForPreTraining):
    """A numpy-in numpy-out predictor over the model, as the accuracy functions take."""

    @torch.no_grad()
    def predict(input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray):
        outputs = model(torch.from_numpy(input_ids), torch.from_numpy(attention_mask),
                        torch.from_numpy(token_type_ids))
        return outputs["prediction_logits"].numpy(), outputs["sop_logits"].numpy()

    return predict


def adamw(model: AlbertForPreTraining, settings: TrainingSettings) -> torch.optim.AdamW:
    """AdamW with no weight decay on the 1-d parameters (biases, LayerNorm weights)."""
    decay, no_decay = [], []
    for parameter in model.parameters():
        (no_decay if parameter.ndim == 1 else decay).append(parameter)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=settings.learning_rate, betas=(0.9, 0.98), eps=1e-6,
    )


def pretrain(model: AlbertForPreTraining, encoded: list[list[int]], settings: TrainingSettings,
             rng: np.random.Generator, total: int, progress: bool) -> tuple[list[tuple], int, int]:
    """`total` steps of masked LM + sentence order over fresh epochs of the training sentences: short sequences,
    then max_length for the last long_fraction. Returns (loss curve [(step, mlm, sop)], epochs begun, tokens seen)."""
    vocab_size = model.config.vocab_size
    long_from = int(total * (1.0 - settings.long_fraction))
    optimizer = adamw(model, settings)
    scheduler = linear_schedule(optimizer, max(1, int(total * settings.warmup_fraction)), total)
    curve = []
    model.train()
    bar = tqdm(total=total, desc="pretraining", unit="step", disable=not progress, dynamic_ncols=True)
    step = epochs = tokens_seen = 0
    while step < total:
        length = settings.max_length if step >= long_from else min(settings.short_length, settings.max_length)
        batches = epoch_batches(encoded, settings, vocab_size, rng, length)
        for batch in batches:
            mlm, sop = pretraining_losses(model, batch)
            optimizer.zero_grad(set_to_none=True)
            (mlm + sop).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            step += 1
            tokens_seen += int(batch["attention_mask"].sum())
            curve.append((step, round(mlm.item(), 4), round(sop.item(), 4)))
            bar.update(1)
            bar.set_postfix(mlm=f"{mlm.item():.3f}", sop=f"{sop.item():.3f}", length=length)
            if step >= total or (length != settings.max_length and step >= long_from):
                break
        epochs += 1
    bar.close()
    model.eval()
    return curve, epochs, tokens_seen


def train(corpus: Path, output: Path | None, settings: TrainingSettings, max_steps: int | None = None,
          progress: bool = True, **shape) -> dict:
    """Train tokenizer and model; write them (and the report) to `output` unless it is None. Returns the report.

    `shape` overrides fields of the model config (e.g. hidden_size=32 for a quick test)."""
    started, started_cpu = time.perf_counter(), time.process_time()
    torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)

    train_lines, heldout_lines = data.split_corpus(corpus)
    tokenizer = train_tokenizer(train_lines, settings.vocab_size)
    vocab_size = tokenizer.get_vocab_size()
    train_sentences = data.sentences_of(train_lines)
    heldout_sentences = data.sentences_of(heldout_lines)
    encoded = data.encode_sentences(tokenizer, train_sentences)

    config = tiny_config(vocab_size, settings.max_length, **shape)
    model = AlbertForPreTraining(config)
    initialize(model)

    total = min(max_steps or settings.steps, settings.steps)
    curve, epochs, tokens_seen = pretrain(model, encoded, settings, rng, total, progress)
    train_seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - started_cpu
    report = {
        "corpus": corpus.name,
        "split": "Project Gutenberg header and licence removed; first 90% of the remaining non-empty lines "
                 "train, last 10% held out",
        "train_sentences": len(train_sentences),
        "heldout_sentences": len(heldout_sentences),
        "train_tokens": int(sum(len(ids) for ids in encoded)),
        "vocab_size": vocab_size,
        "model": {name: getattr(config, name) for name in MODEL_SHAPE},
        "parameters": sum(p.numel() for p in model.parameters()),
        "steps": len(curve),
        "epochs": epochs,  # passes over the training sentences begun
        "tokens_seen": tokens_seen,
        "train_seconds": round(train_seconds, 1),  # wall clock, on a machine other work shares
        "train_cpu_seconds": round(cpu_seconds, 1),
        "final_train_loss": {"mlm": mean_tail(curve, 1), "sop": mean_tail(curve, 2)},
        "settings": asdict(settings),
        "machine": {"torch": torch.__version__, "python": platform.python_version(),
                    "threads": settings.threads, "processor": platform.machine()},
        "loss_curve": curve,
    }
    if output is not None:  # the weights first: an evaluation failure must not lose a training run
        save_model(output, model, config, tokenizer, heldout_sentences)
        write_report(output, report)

    report.update(evaluate(model, tokenizer, encoded, heldout_sentences, settings))
    if output is not None:
        write_report(output, report)
    return report


def evaluate(model: AlbertForPreTraining, tokenizer: Tokenizer, encoded_train: list[list[int]],
             heldout_sentences: list[str], settings: TrainingSettings) -> dict:
    """The report's held-out numbers and the demo sentences."""
    from . import accuracy

    model.eval()
    plain, masked = data.evaluation_examples(tokenizer, heldout_sentences, settings.max_length, seed=settings.seed)
    predict = torch_logits(model)
    counts = data.token_counts(encoded_train, tokenizer.get_vocab_size())
    return {
        "heldout_examples": len(plain),
        "heldout": {
            "mlm": accuracy.mlm_accuracy(predict, masked),
            "sop": accuracy.sop_accuracy(predict, plain),
            "unigram_baseline_mlm": accuracy.unigram_baseline(counts, masked),
            "sop_majority_baseline": round(float(max(plain.sop_labels.mean(), 1 - plain.sop_labels.mean())), 4),
        },
        "demo": demo_sentences(model, tokenizer, heldout_sentences, counts),
    }


def reevaluate(corpus: Path, output: Path) -> dict:
    """Recompute the held-out section of output/training_report.json from the saved model (no training)."""
    from albert_export.checkpoint import from_pretrained

    report = json.loads((output / "training_report.json").read_text())
    settings = TrainingSettings(**report["settings"])
    tokenizer = Tokenizer.from_file(str(output / "tokenizer.json"))
    train_lines, heldout_lines = data.split_corpus(corpus)
    encoded = data.encode_sentences(tokenizer, data.sentences_of(train_lines))
    torch.set_num_threads(settings.threads)
    model = from_pretrained(output, "pretraining")
    report.update(evaluate(model, tokenizer, encoded, data.sentences_of(heldout_lines), settings))
    write_report(output, report)
    return report


DEMO_FILE = "heldout_masked.txt"


@torch.no_grad()
def demo_sentences(model: AlbertForPreTraining, tokenizer: Tokenizer, sentences: list[str], counts: np.ndarray,
                   count: int = 8, max_words: int = 16, common: int = 30) -> list[dict]:
    """Held-out sentences with one word (3+ letters, one token) replaced by [MASK] that the model gets right
    at top-1: the README's fill-mask demo. Words outside the `common` most frequent tokens come first, then
    the most confident; one sentence per answer."""
    frequent = set(np.argsort(-counts, kind="stable")[:common].tolist())
    candidates = []
    for sentence in sentences:
        words = sentence.split()
        if not 5 <= len(words) <= max_words:
            continue
        best = None
        for position, word in enumerate(words[1:-1], start=1):
            answer = tokenizer.token_to_id("▁" + word.lower()) if word.isalpha() and len(word) >= 3 else None
            if answer is None:
                continue
            text = " ".join(words[:position] + ["[MASK]"] + words[position + 1 :])
            encoding = tokenizer.encode(text)
            if len(encoding.ids) > model.config.max_position_embeddings:
                break
            logits = model(torch.tensor([encoding.ids]))["prediction_logits"][0, encoding.ids.index(data.MASK)]
            probabilities = torch.softmax(logits, dim=-1)
            if int(probabilities.argmax()) != answer:
                continue
            item = {"text": text, "answer": word.lower(), "score": round(float(probabilities[answer]), 4),
                    "common": answer in frequent}
            if best is None or (item["common"], -item["score"]) < (best["common"], -best["score"]):
                best = item
        if best is not None:
            candidates.append(best)
    chosen, answers = [], set()
    for item in sorted(candidates, key=lambda item: (item["common"], -item["score"])):
        if item["answer"] not in answers:
            chosen.append(item)
            answers.add(item["answer"])
    return chosen[:count]


def write_report(output: Path, report: dict) -> None:
    (output / "training_report.json").write_text(json.dumps(report, indent=1) + "\n")
    write_loss_curve(report["loss_curve"], output / "loss_curve.png")
    if "demo" in report:
        (output / DEMO_FILE).write_text("".join(item["text"] + "\n" for item in report["demo"]))


def mean_tail(curve: list[tuple], column: int, window: int = 50) -> float:
    tail = [row[column] for row in curve[-window:]]
    return round(float(np.mean(tail)), 4) if tail else float("nan")


def initialize(model: AlbertForPreTraining) -> None:
    """transformers' _init_weights (normal(0, initializer_range), zero biases, unit LayerNorms)."""
    std = model.config.initializer_range
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight, 0.0, std)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, torch.nn.Embedding):
            torch.nn.init.normal_(module.weight, 0.0, std)
            if module.padding_idx is not None:
                torch.nn.init.zeros_(module.weight[module.padding_idx])
        elif isinstance(module, torch.nn.LayerNorm):
            torch.nn.init.ones_(module.weight)
            torch.nn.init.zeros_(module.bias)
    model.tie_weights()


def checkpoint_state(model: AlbertForPreTraining) -> dict[str, torch.Tensor]:
    """The state dict as HF saves it: tied aliases left out, every tensor contiguous and unshared."""
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items() if k not in TIED_ALIASES}


def save_model(output: Path, model: AlbertForPreTraining, config: AlbertConfig, tokenizer: Tokenizer,
               heldout_sentences: list[str]) -> None:
    """config.json, model.safetensors, tokenizer.json (+ tokenizer_config.json), and the held-out sentences."""
    from safetensors.torch import save_file

    output.mkdir(parents=True, exist_ok=True)
    config.save(output)
    save_file(checkpoint_state(model), str(output / "model.safetensors"), metadata={"format": "pt"})
    (output / "model.safetensors").chmod(0o644)  # safetensors writes 0600; a packaged file is read by all
    tokenizer.save(str(output / "tokenizer.json"))
    (output / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(config.max_position_embeddings),
                                                             indent=2) + "\n")
    (output / "heldout.txt").write_text("\n".join(heldout_sentences) + "\n")


def write_loss_curve(curve: list[tuple], path: Path, window: int = 25) -> Path:
    """The training losses (moving average over `window` steps) as a PNG; an SVG when matplotlib is missing."""
    steps = np.array([row[0] for row in curve])
    smooth = lambda values: np.convolve(values, np.ones(window) / window, mode="valid")  # noqa: E731
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return write_svg_curve(curve, path.with_suffix(".svg"))
    figure, axis = plt.subplots(figsize=(6, 3.2), dpi=100)
    for column, label in ((1, "masked LM"), (2, "sentence order")):
        values = np.array([row[column] for row in curve])
        if len(values) >= window:
            axis.plot(steps[window - 1 :], smooth(values), label=label)
        else:
            axis.plot(steps, values, label=label)
    axis.set_xlabel("step")
    axis.set_ylabel(f"training loss ({window}-step mean)")
    axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def write_svg_curve(curve: list[tuple], path: Path) -> Path:
    width, height, top = 600, 300, max(max(row[1], row[2]) for row in curve)
    last = curve[-1][0]
    lines = []
    for column, colour in ((1, "#1f77b4"), (2, "#ff7f0e")):
        points = " ".join(f"{row[0] / last * width:.1f},{height - row[column] / top * height:.1f}" for row in curve)
        lines.append(f'<polyline fill="none" stroke="{colour}" points="{points}"/>')
    path.write_text(f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">'
                    + "".join(lines) + "</svg>\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--seed", type=int, default=TrainingSettings.seed)
    parser.add_argument("--steps", type=int, default=TrainingSettings.steps)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=TrainingSettings.batch_size)
    parser.add_argument("--learning-rate", type=float, default=TrainingSettings.learning_rate)
    parser.add_argument("--threads", type=int, default=TrainingSettings.threads)
    parser.add_argument("--evaluate-only", action="store_true",
                        help="recompute the held-out numbers of the model already in --output")
    args = parser.parse_args(argv)
    if args.evaluate_only:
        print(json.dumps(reevaluate(args.corpus, args.output)["heldout"], indent=1))
        return 0
    settings = TrainingSettings(seed=args.seed, steps=args.steps, batch_size=args.batch_size,
                                learning_rate=args.learning_rate, threads=args.threads)
    report = train(args.corpus, args.output, settings, max_steps=args.max_steps)
    heldout = report["heldout"]
    print(json.dumps({key: heldout[key] for key in heldout}, indent=1))
    print(f"trained {report['steps']} steps in {report['train_seconds']} s; wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
