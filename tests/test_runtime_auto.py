"""backend="auto" (runtime.cpu): the CPU kind read from /proc/cpuinfo (capped by ONEDNN_MAX_CPU_ISA) and the engine
picked for it — onnxruntime on AVX2-only CPUs and for fp32 bundles, OpenVINO for INT8 where VNNI or AMX exist —,
said in pipe.backend_choice and the log; the same answers whichever engine it picks."""
from __future__ import annotations

import logging

import pytest

from runtime import pipeline
from runtime.cpu import auto_backend, cpu_description
from tests.test_runtime_heads import assert_same, botchan_masked

AMX = "model name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: fpu sse avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_int8 amx_tile\n"
ZEN4 = "model name\t: AMD EPYC 9R14\nflags\t\t: fpu avx2 avx512f avx512_vnni avx512_bf16 avx_vnni\n"
AVX2 = "model name\t: AMD EPYC 7R13\nflags\t\t: fpu avx avx2 fma\n"


def test_cpu_kinds_from_cpuinfo():
    amx = cpu_description(AMX, max_isa="")
    assert (amx["kind"], amx["int8"], amx["bf16"], amx["model"]) == ("AMX", "amx_int8", "amx_bf16", "Intel(R) Xeon(R) Platinum 8480+")
    zen4 = cpu_description(ZEN4, max_isa="")
    assert (zen4["kind"], zen4["int8"], zen4["bf16"]) == ("AVX512-VNNI", "vnni", "avx512_bf16")
    assert zen4["features"] == ["avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16"]
    avx2 = cpu_description(AVX2, max_isa="")
    assert (avx2["kind"], avx2["int8"], avx2["bf16"], avx2["limit"]) == ("AVX2", "none", "none", "")


def test_onednn_max_cpu_isa_caps_the_kind():
    capped = cpu_description(ZEN4, max_isa="AVX2")
    assert (capped["kind"], capped["int8"], capped["bf16"], capped["limit"]) == ("AVX2", "none", "none",
                                                                                 "ONEDNN_MAX_CPU_ISA=AVX2")
    assert "avx512_vnni" in capped["features"]  # the flags are still reported as the CPU has them
    assert cpu_description(AMX, max_isa="AVX512_CORE_VNNI")["kind"] == "AVX512-VNNI"
    assert cpu_description(AMX, max_isa="AVX512_CORE_AMX")["kind"] == "AMX"  # a level above every cap: no cap


@pytest.mark.parametrize("cpuinfo, precision, openvino, expected, said", [
    (AMX, "int8", True, "openvino", "an int8 bundle on an AMX CPU"),
    (ZEN4, "int8", True, "openvino", "OpenVINO's vnni int8 kernels are faster"),
    (AVX2, "int8", True, "onnxruntime", "without VNNI or AMX"),
    (ZEN4, "int8", False, "onnxruntime", "openvino is not installed"),
    (ZEN4, "fp32", True, "onnxruntime", "a fp32 bundle on an AVX512-VNNI CPU"),
    (AVX2, "fp16", True, "onnxruntime", "a fp16 bundle on an AVX2 CPU"),
])
def test_auto_picks_per_cpu_kind_and_precision(cpuinfo, precision, openvino, expected, said):
    backend, why = auto_backend(precision, cpu=cpu_description(cpuinfo, max_isa=""), openvino=openvino)
    assert backend == expected and said in why


def test_options_only_one_engine_takes_decide_for_it():
    avx2 = cpu_description(AVX2, max_isa="")
    assert auto_backend("fp32", backend_options={"precision": "bf16"}, cpu=avx2, openvino=True)[0] == "openvino"
    assert auto_backend("int8", backend_options={"low_memory": True}, cpu=cpu_description(AMX, max_isa=""),
                        openvino=True) == ("onnxruntime", "backend_options low_memory are onnxruntime's")
    assert auto_backend("int8", providers=["CPUExecutionProvider"], openvino=True)[0] == "onnxruntime"
    assert auto_backend("int8", device="cuda:0", openvino=True)[0] == "onnxruntime"


def test_pipeline_auto_says_what_it_picked_and_answers_alike(handmade_bundle, caplog):
    bundle = handmade_bundle("fill-mask")
    expected_backend, why = auto_backend("fp32")
    with caplog.at_level(logging.INFO, logger="runtime.pipelines"):
        auto = pipeline(bundle, backend="auto", threads=1)
    assert auto.backend_choice == f"{expected_backend}: {why}"
    assert f"backend='auto' picked {expected_backend} for this fp32 bundle: {why}" in caplog.text
    texts = botchan_masked(3, seed=8)
    assert_same(auto(texts), pipeline(bundle, threads=1)(texts))
    assert pipeline(bundle, threads=1).backend_choice == "onnxruntime: asked for"


def test_auto_falls_back_to_onnxruntime_where_openvino_cannot_load_the_bundle(handmade_bundle, monkeypatch):
    import sys

    module = sys.modules["runtime.pipelines"]
    from runtime.errors import BackendError

    built = module.context_from_bundle

    def context_from_bundle(bundle, task, engine=None, *, backend="onnxruntime", **options):
        if backend == "openvino":
            raise BackendError("OpenVINO cannot convert com.microsoft.QAttention")
        return built(bundle, task, engine, backend=backend, **options)

    monkeypatch.setattr(module, "auto_backend", lambda precision, **_: ("openvino", "an int8 bundle on an AMX CPU"))
    monkeypatch.setattr(module, "context_from_bundle", context_from_bundle)
    auto = pipeline(handmade_bundle("fill-mask"), backend="auto", threads=1)
    assert auto.backend_choice == ("onnxruntime: an int8 bundle on an AMX CPU; but openvino cannot run this bundle "
                                   "(OpenVINO cannot convert com.microsoft.QAttention)")
    assert type(auto.backend).__name__ == "OnnxRuntimeBackend"
