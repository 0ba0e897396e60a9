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
                         "--threads", "1", "--calibration-samples", "4", "--output", str(tmp_path)])
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
    assert table.count(" bundles on ") == 2  # the default backend for int8 and fp32 bundles on this CPU kind
    rows = {c["name"]: c for c in result["candidates"]}
    assert all(rows[n]["resident_mb"] > 0 for n in names if n != "pytorch fp32")
    assert all(rows[n]["int8_agreement"].startswith("top-1 ") for n in rows if rows[n]["precision"] == "int8")
    assert rows["openvino ours fp32 unrolled"]["max_diff"] < 1e-4


def test_bad_shape_is_a_clear_error():
    with pytest.raises(SystemExit, match="shape '1x' is not BxS"):
        bench.parse_shapes("1x")
    with pytest.raises(SystemExit, match="out of range"):
        bench.parse_shapes("1x600")
