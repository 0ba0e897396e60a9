"""The benchmark's end-to-end and long-input rows (devtools.bench calls them): what users run, through
`runtime.pipeline(bundle, backend=...)`, tokenization and postprocessing included, beside the graph-only figure.

End to end: the bench's checkpoint exported as real bundles (`albert_export.export`: fp32, and INT8 calibrated on
the SQuAD sample), each in onnxruntime, OpenVINO (where installed) and backend="auto" (the row says what it
picked), answering SQuAD questions one by one as `qa(question=..., context=...)` does; per request: the median
total, and the median of its stages (preprocess, forward = the engine alone, postprocess), beside transformers'
question-answering pipeline on the same weights (PyTorch eager), all interleaved round by round.

Long inputs: one question over a 2k / 20k / 100k-character context (botchan), and token classification with
stride over 5k / 50k characters, ours (fp32 bundle, onnxruntime) against transformers' pipeline on the same
weights, seconds and ratio, the windows each made, and whether the answers agree.
"""
from __future__ import annotations

import shutil
import statistics
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
BOTCHAN = SHARED / "botchan.txt"
LONG_SIZES = {"question-answering": (2000, 20000, 100000), "token-classification": (5000, 50000)}
LONG_QUESTION = "What did the teacher say to the narrator?"
NER_STRIDE = 128
NER_LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]


def parse_long_sizes(text: str) -> dict[str, tuple[int, ...]]:
    """'qa=2000,20000;ner=5000' -> {task: character counts}; '' none."""
    sizes: dict[str, tuple[int, ...]] = {}
    names = {"qa": "question-answering", "ner": "token-classification"}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        key, _, values = part.partition("=")
        if key.strip() not in names:
            raise SystemExit(f"albert-bench: error: --long-sizes part {part!r} is not qa=N,... or ner=N,...")
        try:
            sizes[names[key.strip()]] = tuple(int(v) for v in values.split(",") if v.strip())
        except ValueError:
            raise SystemExit(f"albert-bench: error: --long-sizes part {part!r} has a size that is not a number") from None
    return sizes


def format_long_sizes(sizes: dict[str, tuple[int, ...]]) -> str:
    short = {"question-answering": "qa", "token-classification": "ner"}
    return ";".join(f"{short[task]}={','.join(map(str, values))}" for task, values in sizes.items())


def checkpoint_with_tokenizer(directory: Path) -> Path:
    """The bench's saved checkpoint made exportable: the embedded default model's tokenizer beside it."""
    from albert_export.checkpoint import default_model_dir

    for name in ("tokenizer.json", "tokenizer_config.json"):
        if (default_model_dir() / name).is_file() and not (directory / name).exists():
            shutil.copy(default_model_dir() / name, directory / name)
    return directory


def export_bundles(checkpoint: Path, work: Path, samples: int, log) -> dict[str, Path]:
    """{precision: bundle} for the QA checkpoint: fp32 (optimize=onnxruntime) and INT8 (its own profile)."""
    from albert_export import export
    from devtools.bench import PROFILE, SQUAD, TASK

    quiet = lambda message: None  # noqa: E731
    bundles = {}
    for precision in ("fp32", "int8"):
        options = {"int8": True, "calibration_data": SQUAD, "calibration_samples": samples} if precision == "int8" else {}
        log(f"end to end: exporting the {precision} bundle")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            bundles[precision] = export(checkpoint, TASK, work / f"bundle-{precision}", validate=False,
                                        optimize=PROFILE[precision], log=quiet, **options)
    return bundles


@dataclass
class Row:
    name: str
    call: object  # example -> answer
    stages: object = None  # example -> (pre, forward, post) seconds, for our pipelines
    note: str = ""
    totals: list[float] = field(default_factory=list)
    parts: list[tuple[float, float, float]] = field(default_factory=list)

    def median_ms(self) -> float:
        return statistics.median(self.totals) * 1000.0

    def part_ms(self, index: int) -> float | None:
        return statistics.median(p[index] for p in self.parts) * 1000.0 if self.parts else None


def staged(pipe):
    """One request through the pipeline's stages, each timed: (answer, (preprocess, forward, postprocess) s)."""
    def run(example):
        t0 = time.perf_counter()
        features = pipe.preprocess(example)
        t1 = time.perf_counter()
        outputs = pipe.forward(features.windows)
        t2 = time.perf_counter()
        answer = pipe.postprocess(features, outputs)
        return answer, (t1 - t0, t2 - t1, time.perf_counter() - t2)
    return run


def end_to_end_rows(bundles: dict[str, Path], hf_model, threads: int, log) -> list[Row]:
    from transformers import AutoTokenizer
    from transformers import pipeline as hf_pipeline

    from runtime import pipeline
    from runtime.cpu import openvino_installed

    rows = []
    backends = ["onnxruntime"] + (["openvino"] if openvino_installed() else []) + ["auto"]
    for precision, bundle in bundles.items():
        for backend in backends:
            try:
                pipe = pipeline(bundle, backend=backend, threads=threads)
            except Exception as exc:  # an engine that cannot load the bundle: say so, measure the rest
                log(f"end to end: {precision} in {backend}: {exc}")
                continue
            name = f"pipeline() {precision} {backend}" + (f" (picked {pipe.backend_name})" if backend == "auto" else "")
            rows.append(Row(name, pipe, staged(pipe), note=pipe.backend_choice if backend == "auto" else ""))
    tokenizer = AutoTokenizer.from_pretrained(str(bundles["fp32"]))
    hf = hf_pipeline("question-answering", model=hf_model, tokenizer=tokenizer, device="cpu")
    rows.append(Row("transformers pipeline fp32 (pytorch)", lambda example: hf(**example),
                    note="transformers 4.57 QuestionAnsweringPipeline, same weights"))
    return rows


def measure_end_to_end(rows: list[Row], examples: list[dict], rounds: int, warmup: int, log) -> None:
    """Every row answers every example once per round, rows in a new order each round (as devtools.bench.measure)."""
    import numpy as np

    for row in rows:
        for example in examples[:warmup]:
            row.stages(example) if row.stages else row.call(example)
    shuffle = np.random.default_rng(7)
    order = list(rows)
    for _ in range(rounds):
        shuffle.shuffle(order)
        for row in order:
            for example in examples:
                started = time.perf_counter()
                if row.stages:
                    _, parts = row.stages(example)
                    row.parts.append(parts)
                else:
                    row.call(example)
                row.totals.append(time.perf_counter() - started)
    log("end to end: " + ", ".join(f"{row.name} {row.median_ms():.1f} ms" for row in rows))


def squad_requests(count: int) -> list[dict]:
    """The first `count` SQuAD sample questions as {"question", "context"} requests."""
    import json

    from devtools.bench import SQUAD

    data = json.loads(SQUAD.read_text(encoding="utf-8"))["data"]
    requests = [{"question": qas["question"], "context": paragraph["context"]}
                for article in data for paragraph in article["paragraphs"] for qas in paragraph["qas"]]
    return requests[:count]


def long_text(characters: int) -> str:
    text = BOTCHAN.read_text(encoding="utf-8")
    start = text.index("CHAPTER I")
    text = text[start:]
    while len(text) < characters:
        text += "\n" + text
    return text[:characters]


def ner_bundle(shape: dict, seed: int, work: Path, log):
    """(bundle, transformers model): a token-classification checkpoint of the bench's shape, random weights."""
    import torch
    from transformers import AlbertConfig, AlbertForTokenClassification

    from albert_export import export

    torch.manual_seed(seed)
    config = AlbertConfig(**shape, num_labels=len(NER_LABELS), id2label=dict(enumerate(NER_LABELS)),
                          label2id={label: i for i, label in enumerate(NER_LABELS)})
    model = AlbertForTokenClassification(config).eval()
    directory = work / "checkpoint-ner"
    model.save_pretrained(directory)
    checkpoint_with_tokenizer(directory)
    log("long inputs: exporting the token-classification bundle")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bundle = export(directory, "token-classification", work / "bundle-ner", validate=False,
                        optimize="onnxruntime", log=lambda message: None)
    return bundle, model


@dataclass
class LongRow:
    task: str
    characters: int
    windows: int
    ours_s: float
    theirs_s: float
    same: str

    @property
    def ratio(self) -> float:
        return self.ours_s / self.theirs_s


def long_input_rows(sizes: dict[str, tuple[int, ...]], qa_bundle: Path | None, qa_model, shape: dict, seed: int,
                    work: Path, threads: int, log) -> list[LongRow]:
    """Each long input once through ours and once through transformers' pipeline (seconds, same model)."""
    from transformers import AutoTokenizer
    from transformers import pipeline as hf_pipeline

    from runtime import pipeline

    rows = []
    for task, characters in sizes.items():
        if not characters:
            continue
        if task == "question-answering":
            bundle, model = qa_bundle, qa_model
        else:
            bundle, model = ner_bundle(shape, seed, work, log)
        ours = pipeline(bundle, threads=threads)
        theirs = hf_pipeline(task, model=model, tokenizer=AutoTokenizer.from_pretrained(str(bundle)), device="cpu")
        stride = min(NER_STRIDE, ours.tokenizer.model_max_length // 4)
        for count in characters:
            text = long_text(count)
            if task == "question-answering":
                item, options = {"question": LONG_QUESTION, "context": text}, {}
                call_ours = lambda: ours(**item)  # noqa: E731
                call_theirs = lambda: theirs(**item)  # noqa: E731
            else:
                item, options = text, {"aggregation_strategy": "simple", "stride": stride}
                call_ours = lambda: ours(item, **options)  # noqa: E731
                call_theirs = lambda: theirs(item, **options)  # noqa: E731
            windows = len(ours.preprocess(item, **options).windows)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                started = time.perf_counter()
                answer = call_ours()
                ours_s = time.perf_counter() - started
                started = time.perf_counter()
                expected = call_theirs()
                theirs_s = time.perf_counter() - started
            rows.append(LongRow(task, count, windows, ours_s, theirs_s, agreement(task, answer, expected)))
            log(f"long input: {task} {count} chars, {windows} windows: ours {ours_s:.2f} s, transformers "
                f"{theirs_s:.2f} s")
    return rows


def agreement(task: str, ours, theirs) -> str:
    """Whether the answers agree: spans and texts exactly, scores within 1e-3 (onnxruntime against PyTorch)."""
    def key(entry):
        return (entry.get("start"), entry.get("end"), entry.get("answer", entry.get("word")),
                entry.get("entity_group"))

    ours_list = ours if isinstance(ours, list) else [ours]
    theirs_list = theirs if isinstance(theirs, list) else [theirs]
    if [key(e) for e in ours_list] != [key(e) for e in theirs_list]:
        return f"differ ({len(ours_list)} vs {len(theirs_list)} {'entities' if task != 'question-answering' else 'answers'})"
    worst = max((abs(float(a["score"]) - float(b["score"])) for a, b in zip(ours_list, theirs_list)), default=0.0)
    return f"same ({len(ours_list)}, score diff {worst:.1g})"


def markdown(rows: list[Row], long_rows: list[LongRow], examples: int, rounds: int) -> list[str]:
    lines = []
    if rows:
        anchor = next((r for r in rows if r.name.startswith("transformers")), None)
        lines += ["", "## End to end: pipeline() per request", "",
                  f"{examples} SQuAD questions answered one by one, {rounds} interleaved rounds, medians in ms per "
                  "request: the total (tokenization, every window through the engine, span decoding), and its "
                  "stages; forward is the engine alone (the graph-only figure of the table above, for the windows "
                  "these requests make). Ratio: against transformers' pipeline on the same weights.", "",
                  "| row | total ms | ratio | preprocess ms | forward ms | postprocess ms | notes |",
                  "|---|---:|---:|---:|---:|---:|---|"]
        for row in rows:
            ratio = f"{row.median_ms() / anchor.median_ms():.2f}" if anchor else "-"
            parts = " | ".join("-" if row.part_ms(i) is None else f"{row.part_ms(i):.1f}" for i in range(3))
            lines.append(f"| {row.name} | {row.median_ms():.1f} | {ratio} | {parts} | {row.note} |")
    if long_rows:
        lines += ["", "## Long inputs: ours against transformers' pipeline", "",
                  "One call each, seconds (ours: the fp32 bundle in onnxruntime; transformers: PyTorch eager, same "
                  f"weights). QA: one question over the context, default windows; NER: aggregation_strategy=simple "
                  f"with stride. Target: ratio <= 1.0 at every size, time growing linearly with the windows.", "",
                  "| task | characters | windows | ours s | transformers s | ratio | ours ms per window | answers |",
                  "|---|---:|---:|---:|---:|---:|---:|---|"]
        for row in long_rows:
            lines.append(f"| {row.task} | {row.characters} | {row.windows} | {row.ours_s:.2f} | {row.theirs_s:.2f} | "
                         f"{row.ratio:.2f} | {row.ours_s / max(row.windows, 1) * 1000:.1f} | {row.same} |")
    return lines


def as_json(rows: list[Row], long_rows: list[LongRow]) -> dict:
    return {
        "end_to_end": [{"name": r.name, "median_ms": r.median_ms(), "preprocess_ms": r.part_ms(0),
                        "forward_ms": r.part_ms(1), "postprocess_ms": r.part_ms(2), "note": r.note} for r in rows],
        "long_inputs": [{"task": r.task, "characters": r.characters, "windows": r.windows, "ours_s": r.ours_s,
                         "transformers_s": r.theirs_s, "ratio": r.ratio, "answers": r.same} for r in long_rows],
    }


def recommendation(rows: list[Row], cpu: dict) -> list[str]:
    """The default backend per precision on this CPU kind, from the end-to-end rows: the fastest engine."""
    lines = []
    for precision in ("int8", "fp32"):
        ours = [r for r in rows if r.name.startswith(f"pipeline() {precision} ") and "auto" not in r.name]
        if ours:
            best = min(ours, key=Row.median_ms)
            auto = next((r for r in rows if r.name.startswith(f"pipeline() {precision} auto")), None)
            picked = f"; backend='auto' picked {auto.name.split('picked ')[1].rstrip(')')}" if auto else ""
            lines.append(f"{precision} bundles on {cpu['kind']} CPUs ({cpu['model']}), end to end: --backend "
                         f"{best.name.split()[-1]} ({best.median_ms():.1f} ms per SQuAD request){picked}")
    return lines
