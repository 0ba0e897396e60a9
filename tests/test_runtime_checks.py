"""The runtime's range table and its feed and manifest checks: every numeric option in range (one OptionError
line), every input tensor the bundle's model cannot take refused naming the tensor before any engine runs, and a
manifest that does not describe its model refused at load."""
from __future__ import annotations

import argparse
import json
import shutil
import time

import numpy as np
import pytest

from runtime import pipeline
from runtime.arguments import RANGES, check_number, cpu_count, is_integer, number
from runtime.backends import check_feeds
from runtime.backends.base import ModelTensor, check_io, dims_agree
from runtime.bundle import MANIFEST, BundleError, TensorSpec, load_bundle
from runtime.errors import BackendError, InputError, OptionError, TensorError

CPUS = cpu_count()
THREADS = f"threads must be an integer from 1 to {CPUS} (the CPUs this process may use), got "


@pytest.mark.parametrize("value", [10**6, 1.5, "2", True, 0, -1, 2**63, float("nan")])
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_threads_out_of_range_is_one_option_error_before_loading(handmade_bundle, backend, value):
    started = time.monotonic()
    with pytest.raises(OptionError) as refused:
        pipeline(handmade_bundle("fill-mask"), backend=backend, threads=value)
    assert str(refused.value) == THREADS + repr(value)
    assert time.monotonic() - started < 5  # refused, not a million OS threads started


def test_threads_in_range_load(handmade_bundle):
    pipe = pipeline(handmade_bundle("fill-mask"), threads=np.int64(CPUS))
    assert pipe("Hello [MASK].", top_k=1)[0]["score"] > 0


@pytest.mark.parametrize("name, value, message", [
    ("batch_size", 0, "batch_size must be a positive integer, got 0"),
    ("batch_size", 2.0, "batch_size must be a positive integer, got 2.0"),
    ("num_workers", -1, "num_workers must be a non-negative integer, got -1"),
    ("port", 99999, "port must be an integer from 0 to 65535, got 99999"),
    ("max_delay_ms", float("inf"), "max_delay_ms must be a finite number from 0 to 60000 (one minute), got inf"),
    ("timeout_s", float("nan"), "timeout_s must be a finite number from 0.001 to 86400 (one day), got nan"),
    ("shutdown_timeout_s", True, "shutdown_timeout_s must be a finite number from 0 to 3600 (one hour), got True"),
    ("max_header_bytes", 100, "max_header_bytes must be an integer from 1024 to 1048576 (1 MiB), got 100"),
])
def test_the_table_refuses_in_one_line(name, value, message):
    with pytest.raises(OptionError) as refused:
        check_number(name, value)
    assert str(refused.value) == message


def test_the_table_accepts_what_is_in_range():
    assert check_number("threads", np.int32(1)) == 1 and type(check_number("threads", np.int32(1))) is int
    assert check_number("timeout_s", 2) == 2 and check_number("max_delay_ms", 0.5) == 0.5
    assert all(entry.holds(entry.minimum) for entry in RANGES.values())


def test_an_integer_is_an_int_or_a_numpy_integer_never_a_bool():
    assert all(is_integer(value) for value in (0, -3, 2**70, np.int64(5), np.uint8(1)))
    assert not any(is_integer(value) for value in (True, np.True_, 1.0, np.float32(1), "1", None))
    assert is_integer(7, numpy=False) and not is_integer(np.int64(7), numpy=False)
    assert not is_integer(False, numpy=False)


@pytest.mark.parametrize("name, text, message", [
    ("port", "99999", "must be an integer from 0 to 65535, got '99999'"),
    ("max_delay_ms", "inf", "must be a finite number from 0 to 60000 (one minute), got 'inf'"),
    ("timeout_s", "nan", "must be a finite number from 0.001 to 86400 (one day), got 'nan'"),
    ("top_k", "1.5", "must be a positive integer, got '1.5'"),
    ("threads", "1000000", f"must be an integer from 1 to {CPUS} (the CPUs this process may use), got '1000000'"),
])
def test_the_command_line_type_of_an_entry(name, text, message):
    with pytest.raises(argparse.ArgumentTypeError) as refused:
        number(name)(text)
    assert str(refused.value) == message
    assert number("port")("8080") == 8080 and number("timeout_s")("0.5") == 0.5


GOOD = {"input_ids": [[2, 10, 3]], "attention_mask": [[1, 1, 1]], "token_type_ids": [[0, 0, 0]]}


def fed(**changes):
    return {**{name: np.array(value) for name, value in GOOD.items()}, **changes}


@pytest.mark.parametrize("feeds, tensor, message", [
    (fed(token_type_ids=np.array([[0, -1, 0]])), "token_type_ids",
     "input token_type_ids holds -1 at [0, 1]; it takes 0 to 1 (config.json type_vocab_size 2)"),
    (fed(token_type_ids=np.array([[0, 0, 5]])), "token_type_ids",
     "input token_type_ids holds 5 at [0, 2]; it takes 0 to 1 (config.json type_vocab_size 2)"),
    (fed(input_ids=np.array([[2, 1004, 3]])), "input_ids",
     "input input_ids holds 1004 at [0, 1]; it takes 0 to 1003 (the vocabulary's ids, config.json vocab_size 1004)"),
    (fed(input_ids=np.array([[2, 2**63, 3]], dtype=np.uint64)), "input_ids",
     "input input_ids holds 9223372036854775808 at [0, 1]; it takes 0 to 1003 (the vocabulary's ids, config.json "
     "vocab_size 1004)"),
    (fed(input_ids=[[1, 2**70, 3]]), "input_ids",
     "input input_ids holds values that are not int64 integers (a number past 64 bits, a string, null, ...)"),
    (fed(attention_mask=np.array([[1, 7, 1]])), "attention_mask",
     "input attention_mask holds 7 at [0, 1]; it takes 0 (padding) or 1 (a token)"),
    ({name: np.zeros((1, 129), np.int64) for name in GOOD}, "input_ids",
     "input input_ids has 129 positions; the model has 128 (config.json max_position_embeddings): cut the input to "
     "that length"),
    (fed(input_ids=np.ones((1, 3))), "input_ids", "input input_ids must hold integers (int64), got float64"),
    (fed(input_ids=np.ones(3, np.int64)), "input_ids",
     "input input_ids has shape [3]; the model takes 2 dimensions (batch_size, sequence_length)"),
    (fed(attention_mask=np.ones((1, 4), np.int64)), "attention_mask",
     "input attention_mask has sequence_length 4, input input_ids 3; every input must have the same sequence_length"),
    (fed(attention_mask=np.ones((2, 3), np.int64)), "attention_mask",
     "input attention_mask has batch_size 2, input input_ids 1; every input must have the same batch_size"),
    ({"input_ids": np.array([[2]]), "attention_mask": np.array([[1]])}, "token_type_ids",
     "input token_type_ids is missing; the model takes input_ids, attention_mask, token_type_ids"),
    (fed(position_ids=np.array([[0, 1, 2]])), "position_ids",
     "the model has no input 'position_ids'; it takes input_ids, attention_mask, token_type_ids"),
    ({name: np.zeros((0, 3), np.int64) for name in GOOD}, "input_ids",
     "input input_ids has shape [0, 3]: its batch_size is empty"),
    (fed(input_ids=[[1, 2], [3]]), "input_ids", "input input_ids is not a rectangular array of integers"),
])
def test_every_bad_tensor_is_refused_naming_it_before_the_engine(handmade_bundle, feeds, tensor, message):
    bundle = load_bundle(handmade_bundle("fill-mask"))
    pipe = pipeline(bundle, threads=1)
    for check in (lambda: check_feeds(bundle, feeds), lambda: pipe.backend.infer(feeds)):
        with pytest.raises(TensorError) as refused:
            check()
        assert str(refused.value) == message and refused.value.tensor == tensor
        assert isinstance(refused.value, InputError)


def test_good_tensors_come_back_as_the_manifests_dtype(handmade_bundle):
    bundle = load_bundle(handmade_bundle("multiple-choice"))
    feeds = {name: np.ones((2, 3, 5), np.int32) for name in GOOD}
    feeds["attention_mask"] = np.ones((2, 3, 5), bool)
    feeds["token_type_ids"] = np.zeros((2, 3, 5), np.uint8)
    checked = check_feeds(bundle, feeds)
    assert {name: (a.dtype, a.shape) for name, a in checked.items()} == {name: (np.dtype(np.int64), (2, 3, 5))
                                                                         for name in GOOD}
    pipe = pipeline(bundle, threads=1)
    assert pipe.backend.infer(feeds)["logits"].shape == (2, 3)


def edited(source, target, edit):
    shutil.copytree(source, target)
    manifest = json.loads((target / MANIFEST).read_text())
    edit(manifest)
    (target / MANIFEST).write_text(json.dumps(manifest))
    return target


def logits(manifest):
    return manifest["outputs"][0]


@pytest.mark.parametrize("edit, message", [
    (lambda m: logits(m).update(dims=["sequence_length", "batch_size", "vocab"]),
     "manifest.json says output logits is float32 [sequence_length, batch_size, vocab], model.onnx has float32 "
     "[batch_size, sequence_length, 1004]"),
    (lambda m: logits(m).update(dims=["batch_size", "sequence_length"]),
     "manifest.json says output logits is float32 [batch_size, sequence_length], model.onnx has float32 "
     "[batch_size, sequence_length, 1004]"),
    (lambda m: logits(m).update(dtype="float16"),
     "manifest.json says output logits is float16 [batch_size, sequence_length, vocab], model.onnx has float32 "
     "[batch_size, sequence_length, 1004]"),
    (lambda m: logits(m).update(dims=["batch_size", "sequence_length", 1000]),
     "manifest.json says output logits is float32 [batch_size, sequence_length, 1000], model.onnx has float32 "
     "[batch_size, sequence_length, 1004]"),
    (lambda m: m["inputs"][2].update(dtype="int32"),
     "manifest.json says input token_type_ids is int32 [batch_size, sequence_length], model.onnx has int64 "
     "[batch_size, sequence_length]"),
    (lambda m: m["inputs"].pop(),
     "manifest.json lists inputs input_ids, attention_mask, model.onnx has input_ids, attention_mask, token_type_ids"),
    (lambda m: logits(m).update(name="scores"), "manifest.json lists outputs scores, model.onnx has logits"),
])
def test_a_manifest_that_does_not_describe_its_model_is_refused_at_load(handmade_bundle, tmp_path, edit, message):
    target = edited(handmade_bundle("fill-mask"), tmp_path / "bundle", edit)
    with pytest.raises(BundleError) as refused:
        pipeline(target)
    assert str(refused.value) == message + "; the manifest does not describe its model, re-export the bundle"


def test_dims_agree_rules():
    assert dims_agree("batch_size", "batch_size") and dims_agree("batch_size", "") and dims_agree("batch_size", None)
    assert not dims_agree("batch_size", "sequence_length") and not dims_agree("batch_size", 3)
    assert dims_agree("batch_size*num_choices", "batch_size*num_choices") and dims_agree("sequence", "sequence_length")
    assert dims_agree(13, 13) and not dims_agree(13, 12) and not dims_agree(13, "batch_size") and dims_agree(13, "?") is False
    assert dims_agree("vocab", 1004) and dims_agree("2", 2) and not dims_agree("2", 3)
    check_io("outputs", [], [ModelTensor("x", None, None)], "model.onnx")  # old manifests without outputs
    check_io("outputs", [TensorSpec("x", "float32", ["batch_size"])], [ModelTensor("x", None, None)], "m")


def test_a_backend_without_a_bundle_checks_names_only(tmp_path):
    from onnx import TensorProto, helper, save

    graph = helper.make_graph([helper.make_node("Identity", ["input_ids"], ["out"])], "g",
                              [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b"])],
                              [helper.make_tensor_value_info("out", TensorProto.INT64, ["b"])])
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "m.onnx"))
    from runtime.backends.ort import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend(tmp_path / "m.onnx")
    assert backend.infer({"input_ids": np.array([-5])})["out"].tolist() == [-5]
    with pytest.raises(BackendError) as refused:
        backend.infer({})
    assert str(refused.value) == "model needs input(s) ['input_ids']; it takes ['input_ids']"


def test_onnxruntime_prints_no_error_line_of_its_own(handmade_bundle, capfd):
    """A run that fails inside onnxruntime (here: a backend without its bundle's feed check, fed an id past the
    vocabulary) reaches the caller as an exception only; onnxruntime's red `[E:onnxruntime:...]` line is off."""
    from runtime.backends.ort import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend(load_bundle(handmade_bundle("fill-mask")).model_path, threads=1)
    feeds = {"input_ids": np.array([[1, 5000]]), "attention_mask": np.ones((1, 2), np.int64),
             "token_type_ids": np.zeros((1, 2), np.int64)}
    with pytest.raises(Exception, match="Gather"):
        backend.infer(feeds)
    assert "[E:onnxruntime" not in capfd.readouterr().err


def test_session_options_spinning_off_unless_asked(handmade_bundle):
    from runtime.backends.ort import session_options

    assert session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert session_options(spinning=True).get_session_config_entry("session.intra_op.allow_spinning") == "1"
    with pytest.raises(OptionError) as refused:
        pipeline(handmade_bundle("fill-mask"), backend_options={"spinning": "yes"})
    assert str(refused.value) == "the onnxruntime backend's spinning must be True or False, got 'yes'"
    assert pipeline(handmade_bundle("fill-mask"), backend_options={"spinning": True})("a [MASK].", top_k=1)


@pytest.mark.parametrize("value", [True, 0, 2.0, "8", float("inf")])
def test_batch_size_out_of_range_is_one_option_error(handmade_bundle, value):
    with pytest.raises(OptionError) as refused:
        pipeline(handmade_bundle("fill-mask"), batch_size=value)
    assert str(refused.value) == f"batch_size must be a positive integer, got {value!r}"
    with pytest.raises(OptionError) as refused:
        pipeline(handmade_bundle("fill-mask"))("a [MASK].", batch_size=value)
    assert str(refused.value) == f"batch_size must be a positive integer, got {value!r}"
