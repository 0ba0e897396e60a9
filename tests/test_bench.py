"""The benchmark, end to end on a tiny model shape: every candidate timed, the table, the chart, the targets."""
from __future__ import annotations

import json

import openvino
import pytest
import torch

from devtools import bench

torch.set_num_threads(1)
TINY = {"vocab_size": 30000, "embedding_size": 16, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 64, "max_position_embeddings": 64}


def test_bench_runs_every_candidate_and_writes_table_chart_and_json(tmp_path, capsys):
    status = bench.main(["--config", json.dumps(TINY), "--shapes", "1x8,2x16", "--rounds", "2", "--warmup", "0",
                         "--threads", "1", "--calibration-samples", "4", "--output", str(tmp_path),
                         "--e2e-examples", "2", "--long-sizes", "qa=2000,8000;ner=1500"])
    assert status == 0
    table = (tmp_path / "bench.md").read_text()
    assert capsys.readouterr().out.strip() == table.strip()
    names = ["pytorch fp32", "anchor fp32", "anchor int8"] + [
        f"ours {p} {m}" for m in ("unrolled", "loop") for p in ("fp32", "fp16", "int8")] + [
        "openvino ours int8 unrolled", "openvino ours fp32 unrolled"]
    for name in names:
        assert f"| {name} |" in table
    assert "1x8 ms | ratio | 2x16 ms | ratio" in table
    result = json.loads((tmp_path / "bench.json").read_text())
    listed = [c["name"] for c in result["candidates"]]
    f32 = [name for name in listed if not name.endswith(" bf16")]  # each bf16 row follows its f32 row
    assert f32[:len(names)] == names  # + the anchor's graphs OpenVINO loads
    peers = {"openvino anchor int8", "openvino anchor fp32"}
    if "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):  # a bf16 row per graph
        peers |= {f"openvino {graph} bf16" for graph in ("ours int8 unrolled", "ours fp32 unrolled", "anchor int8",
                                                           "anchor fp32")}
    assert set(listed) - set(names) | set(result["meta"]["refused"]) == peers
    ours = {c["name"]: c for c in result["candidates"]}
    # a tiny model's file is mostly graph structure; albert-base gives 0.26 (docs/bench.md)
    assert ours["ours int8 unrolled"]["file_bytes"] < 0.6 * ours["ours fp32 unrolled"]["file_bytes"]
    assert ours["ours fp16 loop"]["max_diff"] < 2e-2 and ours["ours fp32 loop"]["max_diff"] < 1e-4
    assert all(v > 0 for c in result["candidates"] for v in c["median_ms"].values())
    assert (tmp_path / "bench.png").read_bytes()[:4] == b"\x89PNG"
    assert table.count("MET") + table.count("MISSED") == 9
    cpu = result["meta"]["cpu"]
    assert f"CPU: {cpu['model']} ({cpu['kind']}; int8: {cpu['int8']}, bf16: {cpu['bf16']}" in table
    rows = {c["name"]: c for c in result["candidates"]}
    assert all(rows[n]["resident_mb"] > 0 for n in names if n != "pytorch fp32")
    assert all(rows[n]["int8_agreement"].startswith("top-1 ") for n in rows if rows[n]["precision"] == "int8")
    assert rows["openvino ours fp32 unrolled"]["max_diff"] < 1e-4
    # end to end through runtime.pipeline(bundle, backend=...), stages timed, beside transformers' pipeline
    e2e = {row["name"]: row for row in result["end_to_end"]}
    auto = {precision: next(n for n in e2e if n.startswith(f"pipeline() {precision} auto (picked ")) for precision in ("fp32", "int8")}
    assert set(e2e) == {f"pipeline() {p} {b}" for p in ("fp32", "int8") for b in ("onnxruntime", "openvino")} | set(
        auto.values()) | {"transformers pipeline fp32 (pytorch)"}
    for precision, name in auto.items():
        picked = name.split("picked ")[1].rstrip(")")
        note = e2e[name]["note"]
        assert note.startswith(f"{picked}: a") and f" {precision} bundle on an {cpu['kind']} CPU" in note
    for name, row in e2e.items():
        assert row["median_ms"] > 0 and (name.startswith("transformers") or 0 < row["forward_ms"] < row["median_ms"])
        assert f"| {name} | " in table
    assert table.count("end to end: --backend ") == 2  # the default-backend advice comes from these rows
    long_rows = result["long_inputs"]
    assert [(r["task"], r["characters"]) for r in long_rows] == [
        ("question-answering", 2000), ("question-answering", 8000), ("token-classification", 1500)]
    assert all(r["answers"].startswith("same") and r["windows"] > 1 and r["ratio"] > 0 for r in long_rows)
    assert long_rows[1]["windows"] > 3 * long_rows[0]["windows"]
    assert "## Long inputs: ours against transformers' pipeline" in table


def test_long_sizes_parse_and_refuse_clearly():
    from devtools.bench_pipeline import LONG_SIZES, format_long_sizes, parse_long_sizes

    assert parse_long_sizes(format_long_sizes(LONG_SIZES)) == {
        "question-answering": (2000, 20000, 100000), "token-classification": (5000, 50000)}
    assert parse_long_sizes("") == {} and parse_long_sizes("ner=10") == {"token-classification": (10,)}
    with pytest.raises(SystemExit, match="'mc=3' is not qa=N"):
        parse_long_sizes("mc=3")
    with pytest.raises(SystemExit, match="has a size that is not a number"):
        parse_long_sizes("qa=2k")


def test_bad_shape_is_a_clear_error():
    with pytest.raises(SystemExit, match="shape '1x' is not BxS"):
        bench.parse_shapes("1x")
    with pytest.raises(SystemExit, match="out of range"):
        bench.parse_shapes("1x600")
