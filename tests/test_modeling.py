"""Parity: the reference model against transformers' Albert* classes, loaded from the same save_pretrained dir."""
from __future__ import annotations

import pytest
import torch
import transformers

import albert_export

torch.set_num_threads(1)

TOLERANCE = 1e-5
VOCAB = 300
SMALL = dict(vocab_size=VOCAB, embedding_size=24, hidden_size=64, num_attention_heads=4, intermediate_size=96,
             max_position_embeddings=64)
CONFIGS = {
    # albert-base-v2's shape with a small vocabulary
    "base-v2": dict(vocab_size=VOCAB, embedding_size=128, hidden_size=768, num_attention_heads=12,
                    num_hidden_layers=12, intermediate_size=3072, hidden_act="gelu_new", max_position_embeddings=64),
    "groups2-gelu": dict(SMALL, num_hidden_layers=4, num_hidden_groups=2, hidden_act="gelu"),
    "inner2-relu": dict(SMALL, num_hidden_layers=3, inner_group_num=2, hidden_act="relu"),
    "groups3-inner2-gelu_new": dict(SMALL, num_hidden_layers=6, num_hidden_groups=3, inner_group_num=2,
                                    hidden_act="gelu_new"),
    "silu": dict(SMALL, num_hidden_layers=2, hidden_act="silu"),
}
# task -> (transformers class, extra config, ONNX output name -> transformers output attribute)
HEADS = {
    "feature-extraction": (transformers.AlbertModel, {},
                           {"last_hidden_state": "last_hidden_state", "pooler_output": "pooler_output"}),
    "pretraining": (transformers.AlbertForPreTraining, {},
                    {"prediction_logits": "prediction_logits", "sop_logits": "sop_logits"}),
    "fill-mask": (transformers.AlbertForMaskedLM, {}, {"logits": "logits"}),
    "text-classification": (transformers.AlbertForSequenceClassification, {"num_labels": 3}, {"logits": "logits"}),
    "text-classification-1": (transformers.AlbertForSequenceClassification, {"num_labels": 1},
                              {"logits": "logits"}),
    "token-classification": (transformers.AlbertForTokenClassification, {"num_labels": 3}, {"logits": "logits"}),
    "question-answering": (transformers.AlbertForQuestionAnswering, {},
                           {"start_logits": "start_logits", "end_logits": "end_logits"}),
    "multiple-choice": (transformers.AlbertForMultipleChoice, {}, {"logits": "logits"}),
}
SHAPES = [(1, 1), (1, 7), (1, 33), (3, 1), (3, 7), (3, 33)]
BASE_SHAPES = [(1, 7), (3, 7)]
CHOICES = 2


def perturb(model: torch.nn.Module, seed: int) -> None:
    """HF initializes biases to 0 and LayerNorms to 1; randomize every parameter so no piece can hide."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator) * 0.05
            parameter.copy_(noise + (1.0 if "LayerNorm.weight" in name else parameter))


def saved_pair(tmp_path_factory, config_name: str, head: str):
    """(transformers model, our model) built once from the same save_pretrained directory."""
    cls, extra, _ = HEADS[head]
    torch.manual_seed(0)
    config = transformers.AlbertConfig(**CONFIGS[config_name], **extra)
    reference = cls(config).eval()
    perturb(reference, seed=len(config_name) * 31 + len(head))
    directory = tmp_path_factory.mktemp(f"{config_name}-{head}")
    reference.save_pretrained(directory)
    task = head.removesuffix("-1")
    ours = albert_export.from_pretrained(str(directory), task)
    return reference, ours


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    cache = {}

    def get(config_name, head):
        if (config_name, head) not in cache:
            cache[(config_name, head)] = saved_pair(tmp_path_factory, config_name, head)
        return cache[(config_name, head)]

    return get


def make_inputs(batch: int, seq: int, seed: int, choices: int | None = None):
    """Random ids, right-padded masks (row lengths seq, seq-3, 1) and a second segment with token type 1."""
    generator = torch.Generator().manual_seed(seed)
    lead = (batch, choices) if choices else (batch,)
    input_ids = torch.randint(0, VOCAB, (*lead, seq), generator=generator)
    lengths = torch.tensor([max(1, seq - 3 * (row % 3 != 0) - (seq - 1) * (row % 3 == 2)) for row in range(batch)])
    if choices:
        lengths = lengths[:, None].expand(batch, choices)
    positions = torch.arange(seq)
    attention_mask = (positions < lengths[..., None]).long()
    token_type_ids = ((positions >= seq // 2) & (attention_mask == 1)).long()
    return input_ids, attention_mask, token_type_ids


def compare(reference, ours, head, inputs: dict) -> dict[str, float]:
    with torch.no_grad():
        expected = reference(**inputs)
        actual = ours(**inputs)
    names = HEADS[head][2]
    assert set(actual) == set(names)
    diffs = {}
    for name, attribute in names.items():
        want = getattr(expected, attribute)
        assert actual[name].shape == want.shape, name
        assert actual[name].dtype == torch.float32
        diffs[name] = (actual[name] - want).abs().max().item()
    return diffs


def cases():
    for config_name in CONFIGS:
        for head in HEADS:
            yield pytest.param(config_name, head, id=f"{config_name}-{head}")


@pytest.mark.parametrize("config_name,head", cases())
def test_every_head_matches_transformers(pairs, config_name, head):
    reference, ours = pairs(config_name, head)
    choices = CHOICES if head == "multiple-choice" else None
    shapes = BASE_SHAPES if config_name == "base-v2" else SHAPES
    for batch, seq in shapes:
        input_ids, attention_mask, token_type_ids = make_inputs(batch, seq, seed=batch * 100 + seq, choices=choices)
        if batch == 3 and seq > 1:
            assert 0 < attention_mask.float().mean() < 1 and token_type_ids.any()  # padding and both types present
        inputs = dict(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        diffs = compare(reference, ours, head, inputs)
        assert max(diffs.values()) <= TOLERANCE, (batch, seq, diffs)


@pytest.mark.parametrize("head", list(HEADS))
def test_optional_inputs_default_like_transformers(pairs, head):
    reference, ours = pairs("groups2-gelu", head)
    choices = CHOICES if head == "multiple-choice" else None
    input_ids, attention_mask, token_type_ids = make_inputs(3, 7, seed=5, choices=choices)
    for inputs in (dict(input_ids=input_ids),
                   dict(input_ids=input_ids, attention_mask=attention_mask),
                   dict(input_ids=input_ids, token_type_ids=token_type_ids)):
        diffs = compare(reference, ours, head, inputs)
        assert max(diffs.values()) <= TOLERANCE, (sorted(inputs), diffs)


def test_padding_does_not_change_unpadded_positions(pairs):
    """A padded row's real tokens see the same result as the row alone: the mask really masks."""
    _, ours = pairs("groups2-gelu", "feature-extraction")
    input_ids = torch.randint(0, VOCAB, (1, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        alone = ours(input_ids[:, :5])["last_hidden_state"]
        padded = ours(input_ids, attention_mask=torch.tensor([[1] * 5 + [0] * 4]))["last_hidden_state"][:, :5]
    assert (alone - padded).abs().max().item() <= TOLERANCE


def test_model_is_in_eval_mode_and_deterministic(pairs):
    _, ours = pairs("groups2-gelu", "text-classification")
    assert not ours.training
    input_ids, attention_mask, token_type_ids = make_inputs(3, 7, seed=2)
    with torch.no_grad():
        first = ours(input_ids, attention_mask, token_type_ids)["logits"]
        second = ours(input_ids, attention_mask, token_type_ids)["logits"]
    assert torch.equal(first, second)


def test_pieces_compose_to_forward(pairs):
    """embed -> each layer group at i*G//N -> head is exactly forward (the exporter traces these pieces)."""
    _, ours = pairs("groups3-inner2-gelu_new", "pretraining")
    input_ids, attention_mask, token_type_ids = make_inputs(3, 7, seed=3)
    config = ours.config
    with torch.no_grad():
        hidden, mask = ours.albert.embed(input_ids, attention_mask, token_type_ids)
        for layer in range(config.num_hidden_layers):
            hidden = ours.albert.encoder.albert_layer_groups[layer * config.num_hidden_groups
                                                             // config.num_hidden_layers](hidden, mask)
        pieces = ours.head(hidden)
        whole = ours(input_ids, attention_mask, token_type_ids)
    for name in whole:
        assert torch.equal(pieces[name], whole[name]), name


def test_parameter_names_equal_transformers_state_dict_keys(pairs):
    for head in ("pretraining", "text-classification", "question-answering", "feature-extraction"):
        reference, ours = pairs("inner2-relu", head)
        expected = set(reference.state_dict()) - {"albert.embeddings.position_ids", "embeddings.position_ids",
                                                  "albert.embeddings.token_type_ids", "embeddings.token_type_ids"}
        ours_keys = set(ours.state_dict())
        if head == "feature-extraction":  # HF's bare AlbertModel has no "albert." prefix
            ours_keys = {key.removeprefix("albert.") for key in ours_keys}
        assert ours_keys == expected, head


@pytest.mark.parametrize("activation", ["gelu_fast", "gelu_pytorch_tanh", "swish"])
def test_other_accepted_activations_match_transformers(tmp_path, activation):
    """The config also accepts these HF activation names; each must compute what transformers computes."""
    torch.manual_seed(0)
    reference = transformers.AlbertForMaskedLM(transformers.AlbertConfig(**SMALL, num_hidden_layers=2,
                                                                         hidden_act=activation)).eval()
    perturb(reference, seed=7)
    reference.save_pretrained(tmp_path)
    ours = albert_export.from_pretrained(str(tmp_path), "fill-mask")
    input_ids, attention_mask, token_type_ids = make_inputs(3, 7, seed=4)
    diffs = compare(reference, ours, "fill-mask", dict(input_ids=input_ids, attention_mask=attention_mask,
                                                       token_type_ids=token_type_ids))
    assert diffs["logits"] <= TOLERANCE
