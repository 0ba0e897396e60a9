"""Benchmark: albert-base-v2-shaped question answering (random weights) on this machine's CPU, in one run.

    python -m devtools.bench [--quick] [--shapes 1x128,1x384,8x128] [--rounds N] [--threads T]

Candidates (same weights everywhere):
  pytorch fp32            our reference model, eager
  anchor fp32             torch.onnx.export of transformers' AlbertForQuestionAnswering +
                          onnxruntime.transformers.optimizer.optimize_model(model_type="bert")
  anchor int8             that + onnxruntime.quantization.quantize_dynamic (QInt8 weights)
  ours {fp32,fp16,int8} x {unrolled,loop}
                          the exporter's graph (albert_export.exporter.onnx_from_reference) + graphs.pipeline.optimize
                          (profile per precision, see PROFILE) + the precision step of `albert-export --fp16/--int8`
  openvino ...            the same files in OpenVINO (runtime.backends.openvino, LATENCY hint; f32, and bf16
                          where the CPU has it): our int8 and fp32 unrolled graphs, and the anchor's, engine for engine
Every other ONNX candidate runs in onnxruntime CPU with all graph optimizations on and the same thread count. Runs
are interleaved (each round runs every candidate once per shape, after warm-up) and the median is reported, with
ratios to the anchors, file sizes, resident memory (growth of a fresh process that loads the file through the
runtime's backend and runs it once at 1x16), the max |diff| of start/end logits against PyTorch at the first
shape, and for every INT8 row its QA top-1 agreement with its fp32 peer on the SQuAD sample.
Writes docs/bench.md (the table) and docs/bench.png (a chart) unless told otherwise.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from devtools import bench_pipeline
from runtime.cpu import cpu_description  # the CPU kind, as backend="auto" reads it

ALBERT_BASE_V2 = dict(
    vocab_size=30000, embedding_size=128, hidden_size=768, num_hidden_layers=12, num_hidden_groups=1,
    num_attention_heads=12, intermediate_size=3072, inner_group_num=1, hidden_act="gelu_new",
    max_position_embeddings=512, type_vocab_size=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
)
TASK = "question-answering"
OUTPUTS = ("start_logits", "end_logits")
FULL_SHAPES = ((1, 128), (1, 384), (8, 128))
# the `albert-export --optimize` profile each precision is measured with (graphs.pipeline says why INT8's differs)
PROFILE = {"fp32": "onnxruntime", "fp16": "onnxruntime", "int8": "onnxruntime-without-attention"}
TARGETS = ("best int8 <= 0.6 x anchor int8; best fp32-accuracy path <= 0.5 x anchor fp32; our fp32 in onnxruntime <= "
           "anchor fp32; loop <= 1.05 x unrolled; files <= 1.02 x parameter bytes")
SQUAD = Path(__file__).resolve().parents[2] / "shared" / "data" / "squad_v2_dev_sample.json"
SQUAD_EXAMPLES = 64


@dataclass
class Candidate:
    name: str
    kind: str  # "torch" | "onnx" (onnxruntime) | "openvino"
    precision: str
    path: Path | None = None
    session: object = None
    module: object = None
    file_bytes: int = 0
    max_diff: float | None = None
    note: str = ""
    resident_mb: float | None = None
    agreement: str = ""  # INT8 rows: QA top-1 agreement with the fp32 peer on the SQuAD sample
    peer: str = ""  # the fp32 candidate an INT8 row is compared with
    ov_precision: str = "f32"
    times: dict[tuple[int, int], list[float]] = field(default_factory=dict)

    def run(self, feed: dict[str, np.ndarray]):
        if self.kind == "torch":
            import torch

            with torch.inference_mode():
                return self.module(**{k: torch.from_numpy(v) for k, v in feed.items()})
        if self.kind == "openvino":
            return self.session.infer(feed)
        return self.session.run(None, feed)

    def outputs(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.kind == "torch":
            return {k: v.numpy() for k, v in self.run(feed).items()}
        if self.kind == "openvino":
            return self.session.infer(feed)
        names = [o.name for o in self.session.get_outputs()]
        return dict(zip(names, self.session.run(names, feed)))


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parse_shapes(text: str, max_sequence: int = ALBERT_BASE_V2["max_position_embeddings"]) -> list[tuple[int, int]]:
    shapes = []
    for item in text.split(","):
        try:
            batch, sequence = (int(x) for x in item.lower().split("x"))
        except ValueError:
            raise SystemExit(f"albert-bench: error: shape {item!r} is not BxS, e.g. 1x128") from None
        if batch < 1 or not 1 <= sequence <= max_sequence:
            raise SystemExit(f"albert-bench: error: shape {item!r} out of range (sequence 1..{max_sequence})")
        shapes.append((batch, sequence))
    return shapes


def inputs_for(shape: tuple[int, int], seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    batch, sequence = shape
    ids = rng.integers(5, 1000, size=shape, dtype=np.int64)  # ids the calibration tokenizer also produces
    ids[:, 0] = 2
    types = np.zeros(shape, dtype=np.int64)
    types[:, sequence // 4:] = 1
    return {"input_ids": ids, "attention_mask": np.ones(shape, dtype=np.int64), "token_type_ids": types}


def calibration_tokenizer():
    """The embedded default model's tokenizer, else one built from the shared test SentencePiece model."""
    from albert_export.checkpoint import default_model_dir
    from albert_export.tokenizer import tokenizer_from_pretrained, tokenizer_from_spiece

    default = default_model_dir()
    if (default / "tokenizer.json").is_file() or (default / "spiece.model").is_file():
        return tokenizer_from_pretrained(default)[0]
    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "sentencepiece_test_model.model"
    return tokenizer_from_spiece(shared)


def ort_session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # idle sessions must not spin: with several sessions interleaved, a spinning pool steals the cores from the
    # one being timed (measured: anchor int8 at 1x128 22 ms alone, 119 ms interleaved with spinning pools)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


RESIDENT_PROBE = """
import json, sys
import numpy as np
from devtools.memory import resident_mb
kind, path, threads, precision = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
if kind == "openvino":
    from runtime.backends.openvino import OpenVINOBackend as Engine
    options = {"precision": precision}
else:
    from runtime.backends.ort import OnnxRuntimeBackend as Engine
    options = {}
feed = {"input_ids": np.full((1, 16), 7), "attention_mask": np.ones((1, 16)), "token_type_ids": np.zeros((1, 16))}
before = resident_mb()
Engine(path, threads=threads, **options).infer(feed)
print(json.dumps(resident_mb() - before))
"""


def resident_mb(candidate: Candidate, threads: int) -> float | None:
    """Resident memory growth of a fresh process that loads the candidate's file and runs it once (1x16)."""
    import subprocess

    if candidate.kind == "torch" or not Path("/proc/self/status").exists():
        return None
    done = subprocess.run([sys.executable, "-c", RESIDENT_PROBE, candidate.kind, str(candidate.path), str(threads),
                           candidate.ov_precision], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    if done.returncode != 0:
        log(f"resident memory of {candidate.name}: failed ({done.stderr.strip().splitlines()[-1:]})")
        return None
    return float(json.loads(done.stdout))


def openvino_candidates(candidates: list[Candidate], threads: int, refused: dict[str, str]) -> list[Candidate]:
    """Our int8 and fp32 unrolled graphs and the anchor's in OpenVINO (f32; bf16 too where the CPU has it); what
    OpenVINO cannot load goes into `refused` (name -> why)."""
    try:
        import openvino

        from runtime.backends.openvino import OpenVINOBackend
    except ImportError:
        log("openvino is not installed: no OpenVINO rows (pip install 'albert-export[openvino]')")
        return []
    bf16 = "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    by_name = {c.name: c for c in candidates}
    made = []
    for source in ("ours int8 unrolled", "ours fp32 unrolled", "anchor int8", "anchor fp32"):
        base = by_name.get(source)
        if base is None:
            continue
        for precision in ("f32", "bf16") if bf16 else ("f32",):  # bf16: what int8 leaves in float, too
            name = f"openvino {source}" + (" bf16" if precision == "bf16" else "")
            try:
                engine = OpenVINOBackend(base.path, threads=threads, precision=precision)
            except Exception as exc:  # the anchor's contrib ops may not convert: say so in the log and move on
                log(f"{name}: {exc}")
                refused[name] = str(exc)
                continue
            row_precision = "bf16" if precision == "bf16" and base.precision == "fp32" else base.precision
            made.append(Candidate(name, "openvino", row_precision, base.path,
                                  session=engine, ov_precision=precision, peer=base.peer or "",
                                  note=f"OpenVINO {openvino.__version__.split('-')[0]}, {precision}, LATENCY hint"))
    return made


def squad_batches(tokenizer, max_length: int, examples: int = SQUAD_EXAMPLES) -> list[dict[str, np.ndarray]]:
    from calibration.data import calibration_batches, load_examples, select

    return calibration_batches(tokenizer, TASK, select(load_examples(SQUAD), examples), max_length=max_length)


def top1_agreement(candidate: Candidate, peer: Candidate, batches) -> str:
    """Start/end argmax agreement (the lower of the two) and best-span agreement over the SQuAD batches."""
    from calibration.quantize import _best_spans

    agree = {name: 0 for name in OUTPUTS}
    spans = total = 0
    for batch in batches:
        mask = batch["attention_mask"].astype(bool)
        ours, theirs = candidate.outputs(batch), peer.outputs(batch)
        for name in OUTPUTS:
            a, b = np.where(mask, ours[name], -np.inf), np.where(mask, theirs[name], -np.inf)
            agree[name] += int(np.sum(np.argmax(a, -1) == np.argmax(b, -1)))
        spans += sum(x == y for x, y in zip(_best_spans(ours["start_logits"], ours["end_logits"], mask),
                                            _best_spans(theirs["start_logits"], theirs["end_logits"], mask)))
        total += len(mask)
    return f"top-1 {min(agree.values()) / total:.2f}, span {spans / total:.2f} ({total} SQuAD)"


def build_checkpoint(directory: Path, seed: int, shape: dict | None = None):
    """transformers' AlbertForQuestionAnswering with albert-base-v2's shape (or `shape`), random weights, saved."""
    import torch
    from transformers import AlbertConfig, AlbertForQuestionAnswering

    torch.manual_seed(seed)
    model = AlbertForQuestionAnswering(AlbertConfig(**(shape or ALBERT_BASE_V2))).eval()
    model.save_pretrained(directory)
    return model


def build_anchor(hf_model, work: Path, threads: int) -> list[Candidate]:
    """The path users take today: torch.onnx.export + ORT's transformer optimizer (+ dynamic INT8)."""
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model

    feed = {k: torch.from_numpy(v) for k, v in inputs_for((2, 16)).items()}
    raw = work / "anchor_raw.onnx"
    axes = {name: {0: "batch", 1: "sequence"} for name in (*feed, *OUTPUTS)}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(hf_model, (feed["input_ids"], feed["attention_mask"], feed["token_type_ids"]), str(raw),
                          input_names=list(feed), output_names=list(OUTPUTS), dynamic_axes=axes, opset_version=17,
                          dynamo=False, do_constant_folding=True)
    fp32 = work / "anchor_fp32.onnx"
    optimized = optimize_model(str(raw), model_type="bert", num_heads=hf_model.config.num_attention_heads,
                               hidden_size=hf_model.config.hidden_size)
    fused = optimized.get_fused_operator_statistics()
    optimized.save_model_to_file(str(fp32))
    int8 = work / "anchor_int8.onnx"
    import onnx

    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})  # types hidden by contrib ops
    note = ", ".join(f"{op} {n}" for op, n in fused.items() if n)
    return [Candidate("anchor fp32", "onnx", "fp32", fp32, note=note),
            Candidate("anchor int8", "onnx", "int8", int8, note="quantize_dynamic QInt8", peer="anchor fp32")]


def build_ours(reference, tokenizer, work: Path, layer_modes: list[str], precisions: list[str],
               calibration_samples: int) -> tuple[list[Candidate], dict]:
    import onnx

    from albert_export.exporter import onnx_from_reference
    from albert_export.precision import graph_at_precision
    from graphs.pipeline import optimize

    candidates, reports = [], {}
    for layers in layer_modes:
        traced = onnx_from_reference(reference, layers)
        for precision in precisions:
            profile = PROFILE[precision]
            graph, _ = optimize(traced, profile)
            graph, extra, _ = graph_at_precision(
                graph, precision, task=TASK, tokenizer=tokenizer, layers=layers, vocab_size=reference.config.vocab_size,
                calibration_samples=calibration_samples, max_length=min(128, reference.config.max_position_embeddings),
                log=lambda m: log(f"{layers}: {m}"))
            path = work / f"ours_{precision}_{layers}.onnx"
            onnx.save(graph, str(path))
            name = f"ours {precision} {layers}"
            reports[name] = {"profile": profile, **{k: v for k, v in extra.items() if k != "calibration"}}
            note = f"optimize={profile}"
            accuracy = extra.get("accuracy_vs_fp32")
            if accuracy:
                top1 = min(accuracy["top1_agreement"].values())
                kind = "held-out" if "held-out" in accuracy["data"] else "calibration"
                note += f"; vs fp32 on {accuracy['examples']} {kind} examples: top-1 {top1:.2f}, " \
                        f"span {accuracy.get('qa_span_agreement', 0):.2f}"
            candidates.append(Candidate(name, "onnx", precision, path, note=note,
                                        peer=f"ours fp32 {layers}" if precision == "int8" else ""))
    return candidates, reports


def measure(candidates: list[Candidate], shapes: list[tuple[int, int]], rounds: int, warmup: int) -> None:
    for shape in shapes:
        feed = inputs_for(shape, seed=1)
        for candidate in candidates:
            for _ in range(warmup):
                candidate.run(feed)
            candidate.times[shape] = []
        order = list(candidates)
        shuffle = np.random.default_rng(sum(shape))
        for _ in range(rounds):  # interleaved, in a new order each round: drift and load hit every candidate alike
            shuffle.shuffle(order)
            for candidate in order:
                started = time.perf_counter()
                candidate.run(feed)
                candidate.times[shape].append((time.perf_counter() - started) * 1000.0)
        timings = ", ".join(f"{c.name} {statistics.median(c.times[shape]):.1f}" for c in candidates)
        log(f"{shape[0]}x{shape[1]}: {timings}")


def median(candidate: Candidate, shape) -> float:
    return statistics.median(candidate.times[shape])


def ratio_anchor(c: Candidate, by_name: dict[str, Candidate]) -> Candidate | None:
    if c.kind == "torch":
        return None
    return by_name.get("anchor int8" if c.precision == "int8" else "anchor fp32")


def engine_of(c: Candidate) -> str:
    return {"onnx": "onnxruntime", "openvino": "openvino", "torch": "pytorch"}[c.kind] + (
        " bf16" if c.ov_precision == "bf16" else "")


def recommendation(by_name: dict[str, Candidate], shapes, cpu: dict) -> list[str]:
    """The default backend per precision on this CPU kind: the engine of our fastest row at the first shape."""
    lines = []
    for precision, group in (("int8", ("int8",)), ("fp32", ("fp32", "bf16"))):
        ours = [c for c in by_name.values() if c.precision in group and "anchor" not in c.name and c.kind != "torch"]
        if ours:
            best = min(ours, key=lambda c: median(c, shapes[0]))
            lines.append(f"{precision} bundles on {cpu['kind']} CPUs ({cpu['model']}): --backend "
                         f"{engine_of(best).split()[0]} ({best.name}, {median(best, shapes[0]):.1f} ms at "
                         f"{shapes[0][0]}x{shapes[0][1]})")
    return lines


def markdown(candidates: list[Candidate], shapes, by_name: dict[str, Candidate], meta: dict,
             pipeline_lines: tuple[list[str], list[str]] = ([], [])) -> str:
    """The table; pipeline_lines: (the end-to-end and long-input sections, the default-backend lines they give)."""
    label = lambda s: f"{s[0]}x{s[1]}"  # noqa: E731
    cpu = meta["cpu"]
    lines = [
        f"# Benchmark: {meta['model']} question answering, CPU ({meta['threads']} threads)",
        "",
        f"CPU: {cpu['model']} ({cpu['kind']}; int8: {cpu['int8']}, bf16: {cpu['bf16']}; flags "
        f"{', '.join(cpu['features']) or '-'}; OpenVINO sees {meta['openvino_caps']}).",
        "",
        f"{meta['when']}; onnxruntime {meta['ort']}, openvino {meta['openvino']}, torch {meta['torch']}; "
        f"{meta['rounds']} interleaved rounds after {meta['warmup']} warm-up runs, medians in ms. Ratios: "
        "fp32/bf16/fp16 rows against anchor fp32, int8 rows against anchor int8. max diff: max |start/end logits - "
        f"PyTorch| at {label(shapes[0])}. resident MB: growth of a fresh process that loads the file through the "
        "runtime's backend and runs it once (1x16). INT8 agreement: QA start/end top-1 and best-span agreement with "
        f"the row's fp32 peer on the SQuAD sample. Machine: {meta['cpus']} CPU cores shared with other work "
        f"(load average {meta['load']} at the start, {meta.get('load_end', '-')} at the end), so absolute times "
        "are noisy; compare ratios. fp16 on a CPU has no fast kernels (it is meant for GPUs).",
        "",
        "| candidate | " + " | ".join(f"{label(s)} ms | ratio" for s in shapes)
        + " | file MB | resident MB | max diff | INT8 agreement vs fp32 | notes |",
        "|---|" + "---:|---:|" * len(shapes) + "---:|---:|---:|---|---|",
    ]
    for c in candidates:
        anchor = ratio_anchor(c, by_name)
        cells = []
        for s in shapes:
            ratio = f"{median(c, s) / median(anchor, s):.2f}" if anchor else "-"
            cells.append(f"{median(c, s):.1f} | {ratio}")
        size = f"{c.file_bytes / 1e6:.1f}" if c.file_bytes else "-"
        resident = "-" if c.resident_mb is None else f"{c.resident_mb:.1f}"
        diff = "-" if c.max_diff is None else f"{c.max_diff:.2g}"
        lines.append(f"| {c.name} | " + " | ".join(cells)
                     + f" | {size} | {resident} | {diff} | {c.agreement or '-'} | {c.note} |")
    lines += [f"| {name} | refused: {why} |" for name, why in meta.get("refused", {}).items()]
    lines += ["", f"Parameter bytes: {meta['parameter_bytes'] / 1e6:.2f} MB (fp32). Resident MB includes each "
              "engine's own libraries and buffers (OpenVINO's CPU plugin is ~50 MB of that on a tiny model).", "",
              "## Default backend on this CPU", ""]
    sections, advice = pipeline_lines
    lines += [f"- {line}" for line in (advice or recommendation(by_name, shapes, cpu))]
    lines += ["", "## Targets", "", f"({TARGETS})", ""]
    lines += [f"- {line}" for line in target_lines(by_name, shapes, meta["parameter_bytes"])]
    lines += sections
    return "\n".join(lines) + "\n"


def target_lines(by_name: dict[str, Candidate], shapes, parameter_bytes: int) -> list[str]:
    label = lambda s: f"{s[0]}x{s[1]}"  # noqa: E731
    lines = []

    def verdict(what, ratios, factor):
        held = all(r <= factor for r in ratios.values())
        lines.append(f"{'MET' if held else 'MISSED'}: {what}: " +
                     ", ".join(f"{label(s)} {r:.2f}" for s, r in ratios.items()) + f" (target <= {factor})")

    def check(name, other, factor, what):
        a, b = by_name.get(name), by_name.get(other)
        if a is not None and b is not None:
            verdict(what, {s: median(a, s) / median(b, s) for s in shapes}, factor)

    def best(group, anchor, factor, what):
        rows = [c for c in by_name.values() if c.precision in group and "anchor" not in c.name and c.kind != "torch"]
        if rows and anchor in by_name:
            ratios, names = {}, set()
            for s in shapes:
                fastest = min(rows, key=lambda c: median(c, s))
                ratios[s] = median(fastest, s) / median(by_name[anchor], s)
                names.add(fastest.name)
            verdict(f"best {what} ({', '.join(sorted(names))}) / {anchor}", ratios, factor)

    best(("int8",), "anchor int8", 0.6, "int8")
    best(("fp32", "bf16"), "anchor fp32", 0.5, "fp32-accuracy path")
    for layers in ("unrolled", "loop"):
        check(f"ours fp32 {layers}", "anchor fp32", 1.0, f"ours fp32 {layers} in onnxruntime / anchor fp32")
    for precision in ("fp32", "fp16", "int8"):
        check(f"ours {precision} loop", f"ours {precision} unrolled", 1.05, f"{precision} loop / unrolled")
    for layers in ("unrolled", "loop"):
        c = by_name.get(f"ours fp32 {layers}")
        if c is not None and c.file_bytes:
            ratio = c.file_bytes / parameter_bytes
            lines.append(f"{'MET' if ratio <= 1.02 else 'MISSED'}: ours fp32 {layers} file / parameter bytes: "
                         f"{ratio:.3f} (target <= 1.02)")
    return lines


def chart(candidates: list[Candidate], shapes, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(max(8, 1.6 * len(candidates)), 4.8))
    width = 0.8 / len(shapes)
    positions = np.arange(len(candidates))
    for index, shape in enumerate(shapes):
        values = [median(c, shape) for c in candidates]
        axes.bar(positions + index * width, values, width, label=f"{shape[0]}x{shape[1]}")
    axes.set_xticks(positions + width * (len(shapes) - 1) / 2)
    axes.set_xticklabels([c.name for c in candidates], rotation=30, ha="right")
    axes.set_yscale("log")
    axes.set_ylabel("median latency, ms (log)")
    axes.set_title("albert-base-v2-shaped QA, CPU: onnxruntime and OpenVINO (lower is better)")
    axes.legend(title="batch x sequence")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def score(candidates: list[Candidate], reference, check: dict[str, np.ndarray], threads: int, squad) -> None:
    """Each ONNX / OpenVINO candidate's file size, max |diff| against the PyTorch reference on `check`, resident
    memory, and for INT8 rows the QA agreement with their fp32 peer on the SQuAD batches."""
    import torch

    with torch.inference_mode():
        outputs = reference(**{name: torch.from_numpy(array) for name, array in check.items()})
        expected = {name: tensor.numpy() for name, tensor in outputs.items()}
    by_name = {c.name: c for c in candidates}
    for candidate in candidates:
        if candidate.kind == "torch":
            continue
        candidate.file_bytes = candidate.path.stat().st_size
        got = candidate.outputs(check)
        candidate.max_diff = max(float(np.abs(got[name] - expected[name]).max()) for name in OUTPUTS)
        candidate.resident_mb = resident_mb(candidate, threads)
        if candidate.precision == "int8" and candidate.peer in by_name:
            candidate.agreement = top1_agreement(candidate, by_name[candidate.peer], squad)


def openvino_description() -> tuple[str, str]:
    """(OpenVINO's version, the CPU capabilities it sees), or "not installed" twice."""
    try:
        import openvino
    except ImportError:
        return "not installed", "not installed"
    return openvino.__version__.split("-")[0], ", ".join(openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def write_results(output: Path, candidates: list[Candidate], shapes, meta: dict, reports: dict,
                  end_to_end: tuple[list, list] = ([], [])) -> None:
    """bench.md (also printed), bench.json and bench.png in `output`; end_to_end: (bench_pipeline's end-to-end
    rows, its long-input rows)."""

    rows, long_rows = end_to_end
    sections = bench_pipeline.markdown(rows, long_rows, meta.get("e2e_examples", 0), meta.get("e2e_rounds", 0))
    table = markdown(candidates, shapes, {c.name: c for c in candidates}, meta,
                     (sections, bench_pipeline.recommendation(rows, meta["cpu"])))
    print(table)
    (output / "bench.md").write_text(table)
    (output / "bench.json").write_text(json.dumps({
        "meta": meta, "shapes": [list(s) for s in shapes],
        "candidates": [{"name": c.name, "engine": engine_of(c), "precision": c.precision, "file_bytes": c.file_bytes,
                        "resident_mb": c.resident_mb, "max_diff": c.max_diff, "int8_agreement": c.agreement,
                        "note": c.note, "median_ms": {f"{b}x{s}": median(c, (b, s)) for b, s in shapes}}
                       for c in candidates],
        "ours": reports, **bench_pipeline.as_json(rows, long_rows),
    }, indent=1, default=str) + "\n")
    chart(candidates, shapes, output / "bench.png")
    log(f"wrote {output / 'bench.md'}, {output / 'bench.png'}, {output / 'bench.json'}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m devtools.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="fewer rounds, calibration samples and end-to-end requests (the long-input rows stay)")
    parser.add_argument("--shapes", default=None, help="comma-separated BxS (default 1x128,1x384,8x128)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="timed runs per candidate and shape (default 20; quick 5)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed runs first (default 3; quick 1)")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads for onnxruntime and torch (default 2)")
    parser.add_argument("--layers", default="unrolled,loop", help="layer modes of ours (default unrolled,loop)")
    parser.add_argument("--precisions", default="fp32,fp16,int8", help="precisions of ours (default fp32,fp16,int8)")
    parser.add_argument("--calibration-samples", type=int, default=None,
                        help="INT8 calibration examples (default 64; quick 16)")
    parser.add_argument("--no-anchor", action="store_true", help="skip the transformers + ORT optimizer anchors")
    parser.add_argument("--output", default="docs", help="folder for bench.md, bench.png, bench.json (default docs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-end-to-end", action="store_true",
                        help="skip the pipeline() rows (bundles exported, tokenization and postprocessing timed)")
    parser.add_argument("--e2e-examples", type=int, default=None,
                        help="SQuAD requests per end-to-end round (default 32; quick 8)")
    parser.add_argument("--long-sizes", default=None, metavar="qa=N,..;ner=N,..",
                        help="characters of the long-input rows (default qa=2000,20000,100000;ner=5000,50000; "
                             "'' none)")
    parser.add_argument("--config", default=None, metavar="JSON",
                        help="override the model shape, e.g. '{\"num_hidden_layers\": 2}' (smoke tests)")
    return parser


def pipeline_rows(args, work: Path, hf_model, shape: dict, samples: int, e2e: dict) -> tuple[list, list]:
    """devtools.bench_pipeline's end-to-end rows and long-input rows, over bundles exported from the checkpoint."""
    if args.no_end_to_end:
        return [], []
    checkpoint = bench_pipeline.checkpoint_with_tokenizer(work / "checkpoint")
    bundles = bench_pipeline.export_bundles(checkpoint, work, samples, log)
    rows = bench_pipeline.end_to_end_rows(bundles, hf_model, args.threads, log)
    requests = bench_pipeline.squad_requests(e2e["examples"])
    log(f"end to end: {len(rows)} rows, {len(requests)} SQuAD requests, {e2e['rounds']} rounds")
    bench_pipeline.measure_end_to_end(rows, requests, e2e["rounds"], min(2, len(requests)), log)
    long_rows = bench_pipeline.long_input_rows(e2e["long"], bundles["fp32"], hf_model, shape, args.seed, work,
                                               args.threads, log)
    return rows, long_rows


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    shape = {**ALBERT_BASE_V2, **(json.loads(args.config) if args.config else {})}
    shapes = parse_shapes(args.shapes, shape["max_position_embeddings"]) if args.shapes else list(FULL_SHAPES)
    rounds = args.rounds or (5 if args.quick else 20)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    samples = args.calibration_samples or (16 if args.quick else 64)
    e2e = {"examples": args.e2e_examples or (8 if args.quick else 32), "rounds": 2 if args.quick else 5,
           "long": bench_pipeline.parse_long_sizes(bench_pipeline.format_long_sizes(bench_pipeline.LONG_SIZES)
                                                   if args.long_sizes is None else args.long_sizes)}
    import onnxruntime
    import torch

    torch.set_num_threads(args.threads)
    from albert_export.checkpoint import from_pretrained

    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="albert-bench-") as tmp:
        work = Path(tmp)
        log("building the albert-base-v2-shaped checkpoint (random weights)")
        hf_model = build_checkpoint(work / "checkpoint", args.seed, shape)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reference = from_pretrained(work / "checkpoint", TASK)
        parameter_bytes = sum(p.numel() * p.element_size() for p in reference.parameters())
        candidates = [Candidate("pytorch fp32", "torch", "fp32", module=reference, note="our reference, eager")]
        if not args.no_anchor:
            log("anchor: torch.onnx.export + optimize_model(bert) + quantize_dynamic")
            candidates += build_anchor(hf_model, work, args.threads)
        log("ours: export, optimize, fp16, int8 (calibration)")
        ours, reports = build_ours(reference, calibration_tokenizer(), work, args.layers.split(","),
                                   args.precisions.split(","), samples)
        candidates += ours
        for candidate in candidates:
            if candidate.kind == "onnx":
                candidate.session = ort_session(candidate.path, args.threads)
        refused: dict[str, str] = {}
        candidates += openvino_candidates(candidates, args.threads, refused)
        squad = squad_batches(calibration_tokenizer(), min(128, shape["max_position_embeddings"]),
                              examples=8 if args.quick else SQUAD_EXAMPLES)
        score(candidates, reference, inputs_for(shapes[0], seed=2), args.threads, squad)
        log(f"timing {len(candidates)} candidates at {', '.join(f'{b}x{s}' for b, s in shapes)}, {rounds} rounds")
        measure(candidates, shapes, rounds, warmup)
        end_to_end = pipeline_rows(args, work, hf_model, shape, samples, e2e)
    openvino_version, openvino_caps = openvino_description()
    meta = {"threads": args.threads, "rounds": rounds, "warmup": warmup, "ort": onnxruntime.__version__,
            "openvino": openvino_version, "openvino_caps": openvino_caps, "cpu": cpu_description(),
            "parameter_bytes": parameter_bytes, "refused": refused, "load_end": " ".join(f"{x:.1f}" for x in os.getloadavg()),
            "torch": torch.__version__, "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "cpus": os.cpu_count(), "load": load,
            "model": "albert-base-v2-shaped" if shape == ALBERT_BASE_V2 else f"custom-shaped ({args.config})",
            "e2e_examples": e2e["examples"], "e2e_rounds": e2e["rounds"]}
    write_results(output, candidates, shapes, meta, reports, end_to_end)
    return 0


if __name__ == "__main__":
    if os.environ.get("OMP_WAIT_POLICY") is None:  # torch's OpenMP threads must sleep, not spin, between runs
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"  # read when torch loads, so set before a fresh start
        os.execv(sys.executable, [sys.executable, "-m", "devtools.bench", *sys.argv[1:]])
    sys.exit(main())
