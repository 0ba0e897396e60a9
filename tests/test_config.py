"""AlbertConfig: HF config.json round trips, labels, unknown keys, and one clear error per invalid config."""
from __future__ import annotations

import json
from dataclasses import fields

import pytest
import transformers

from albert_export import AlbertConfig, ConfigError

SMALL = dict(vocab_size=300, embedding_size=24, hidden_size=64, num_attention_heads=4, intermediate_size=96,
             num_hidden_layers=4, num_hidden_groups=2, inner_group_num=2, hidden_act="relu",
             hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.05, max_position_embeddings=80,
             type_vocab_size=3, initializer_range=0.03, layer_norm_eps=1e-6, classifier_dropout_prob=0.2,
             pad_token_id=1, bos_token_id=4, eos_token_id=5)
OUR_FIELDS = [f.name for f in fields(AlbertConfig) if f.name != "extra"]


def hf_saved(tmp_path, **overrides):
    config = transformers.AlbertConfig(**{**SMALL, **overrides})
    config.save_pretrained(tmp_path)
    return config


def test_defaults_equal_transformers_defaults():
    ours, theirs = AlbertConfig(), transformers.AlbertConfig()
    for name in OUR_FIELDS:
        assert getattr(ours, name) == getattr(theirs, name), name


@pytest.mark.parametrize("overrides", [
    {},
    {"id2label": {0: "NEG", 1: "NEU", 2: "POS"}, "label2id": {"NEG": 0, "NEU": 1, "POS": 2},
     "problem_type": "single_label_classification"},
    {"num_labels": 1, "problem_type": "regression"},
    {"num_labels": 5, "problem_type": "multi_label_classification", "hidden_act": "gelu"},
    {"hidden_act": "silu", "tie_word_embeddings": False},
])
def test_round_trip_through_hf_config_json(tmp_path, overrides):
    original = hf_saved(tmp_path, **overrides)
    ours = AlbertConfig.from_json_file(tmp_path / "config.json")
    for name in OUR_FIELDS:
        assert getattr(ours, name) == getattr(original, name), name
    assert ours.num_labels == original.num_labels
    assert ours.label2id == original.label2id

    back = transformers.AlbertConfig.from_dict(ours.to_dict())
    assert back.to_dict() == original.to_dict()

    (tmp_path / "ours").mkdir()
    ours.save(tmp_path / "ours")
    reread = transformers.AlbertConfig.from_pretrained(tmp_path / "ours")
    assert reread.to_dict() == original.to_dict()
    assert AlbertConfig.from_json_file(tmp_path / "ours" / "config.json") == ours


def test_labels_from_id2label_num_labels_and_label2id():
    named = AlbertConfig.from_dict({"id2label": {"0": "O", "1": "B-PER", "2": "I-PER"}, "label2id": {"ignored": 9}})
    assert named.id2label == {0: "O", 1: "B-PER", 2: "I-PER"}
    assert named.label2id == {"O": 0, "B-PER": 1, "I-PER": 2}
    assert named.num_labels == 3
    counted = AlbertConfig.from_dict({"num_labels": 4})
    assert counted.id2label == {i: f"LABEL_{i}" for i in range(4)}
    written = counted.to_dict()
    assert written["id2label"] == {str(i): f"LABEL_{i}" for i in range(4)}
    assert written["label2id"] == {f"LABEL_{i}": i for i in range(4)}
    assert transformers.AlbertConfig.from_dict(written).num_labels == 4


def test_problem_type_kept_and_checked():
    assert AlbertConfig.from_dict({"problem_type": "regression"}).to_dict()["problem_type"] == "regression"
    with pytest.raises(ConfigError, match="problem_type 'ranking' is not one of"):
        AlbertConfig.from_dict({"problem_type": "ranking"})


def test_unknown_keys_preserved(tmp_path):
    data = {**SMALL, "model_type": "albert", "architectures": ["AlbertForMaskedLM"], "my_setting": {"a": [1, 2]},
            "transformers_version": "4.57.6", "torch_dtype": "float32"}
    config = AlbertConfig.from_dict(data)
    assert config.extra == {"architectures": ["AlbertForMaskedLM"], "my_setting": {"a": [1, 2]},
                            "transformers_version": "4.57.6", "torch_dtype": "float32"}
    config.save(tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["my_setting"] == {"a": [1, 2]} and written["architectures"] == ["AlbertForMaskedLM"]
    assert written["model_type"] == "albert"
    assert AlbertConfig.from_json_file(tmp_path / "config.json") == config


@pytest.mark.parametrize("overrides,message", [
    ({"hidden_size": 66, "num_attention_heads": 4}, "hidden_size 66 is not divisible by num_attention_heads 4"),
    ({"num_hidden_layers": 5, "num_hidden_groups": 2}, "num_hidden_layers 5 is not divisible by num_hidden_groups 2"),
    ({"hidden_act": "tanh"}, "hidden_act 'tanh' is not supported; use one of gelu, gelu_new"),
    ({"num_attention_heads": 0}, "num_attention_heads must be a positive integer, got 0"),
    ({"vocab_size": "300"}, "vocab_size must be a positive integer, got '300'"),
    ({"position_embedding_type": "relative_key"}, "position_embedding_type 'relative_key' is not supported"),
    ({"id2label": {}}, "id2label is empty"),
])
def test_invalid_config_raises_one_clear_error(overrides, message):
    with pytest.raises(ConfigError, match="^invalid ALBERT config: ") as caught:
        AlbertConfig.from_dict({**SMALL, **overrides})
    assert message in str(caught.value)


def test_every_problem_is_named_in_the_one_error():
    with pytest.raises(ConfigError) as caught:
        AlbertConfig(hidden_size=66, num_attention_heads=4, num_hidden_layers=5, num_hidden_groups=2,
                     hidden_act="tanh")
    text = str(caught.value)
    assert "hidden_size 66" in text and "num_hidden_layers 5" in text and "hidden_act 'tanh'" in text


def test_non_albert_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 64}))
    with pytest.raises(ConfigError, match="config.json describes a 'bert' model, not ALBERT"):
        AlbertConfig.from_json_file(tmp_path / "config.json")


def test_broken_json(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"model_type": "albert", "hidden_size": ')
    with pytest.raises(ConfigError, match="config.json is not valid JSON: "):
        AlbertConfig.from_json_file(path)


def test_json_that_is_not_an_object(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="config.json must hold a JSON object"):
        AlbertConfig.from_json_file(path)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="config.json does not exist; an ALBERT checkpoint needs a config.json"):
        AlbertConfig.from_json_file(tmp_path / "config.json")


def test_group_of_layer_matches_transformers_formula():
    config = AlbertConfig(**{**SMALL, "num_hidden_layers": 12, "num_hidden_groups": 3})
    assert [config.group_of_layer(i) for i in range(12)] == [0] * 4 + [1] * 4 + [2] * 4
    assert config.head_size == 16


@pytest.mark.parametrize("id2label, message", [
    ({"0": "A", "00": "B"}, "id2label keys '0' and '00' name the same label id 0; keep one"),
    ({"0": "A", "5": "B"}, "id2label must number its labels 0..1, got ids [0, 5]"),
    ({"0": "A", "²": "B"}, "id2label key '²' is not a label id (0, 1, ...)"),
    ({"-1": "A"}, "id2label key '-1' is not a label id (0, 1, ...)"),
])
def test_id2label_keys_must_be_labels_0_to_n(id2label, message):
    with pytest.raises(ConfigError) as refused:
        AlbertConfig.from_dict({**SMALL, "id2label": id2label})
    assert str(refused.value) == f"invalid ALBERT config: {message}"


def test_architectures_that_are_not_class_names_are_one_config_error(tmp_path):
    from albert_export.config import task_from_architectures

    config = AlbertConfig.from_dict({**SMALL, "architectures": ["AlbertForMaskedLM", 5]})
    with pytest.raises(ConfigError) as refused:
        task_from_architectures(config, tmp_path)
    assert str(refused.value) == (f"invalid ALBERT config: {tmp_path / 'config.json'}'s architectures must be a list "
                                  "of class names (e.g. [\"AlbertForMaskedLM\"]), got [\"AlbertForMaskedLM\", 5]; fix "
                                  "it, or pass --task")
    assert task_from_architectures(AlbertConfig.from_dict({**SMALL, "architectures": ["AlbertModel"]}),
                                   tmp_path) == "feature-extraction"
