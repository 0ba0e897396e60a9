"""The reference ALBERT in PyTorch: parameter names equal Hugging Face's state-dict keys.

The model is built from three pieces that the exporter traces separately:
  embed(ids, mask, types) -> hidden (B, S, H), additive mask (B, 1, 1, S)   embeddings + E->H mapping
  encoder.albert_layer_groups[g](hidden, mask) -> hidden (B, S, H)           one shared layer group
  head(hidden) -> {output name: tensor}                                      pooler + task head

With output_hidden_states / output_attentions (forward's arguments, defaulting to the model's attributes of
those names, which from_pretrained sets) the result also holds "hidden_states" (L+1, B, S, H): the embedding
output, then the output of each of the num_hidden_layers layer-group calls; and "attentions" (L*I, B, N, S, S):
the softmax of every inner layer of every call (I = inner_group_num), in order, as transformers 4.57 returns them.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from runtime.taskspec import TASKS, task_table

from .config import AlbertConfig, ConfigError
from .errors import ExportError


class InputShapeError(ExportError, ValueError):
    """The reference model was called with inputs of the wrong rank for its task."""


def new_gelu(x: torch.Tensor) -> torch.Tensor:
    """GELU's tanh approximation (HF's gelu_new), computed as HF computes it."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def gelu_fast(x: torch.Tensor) -> torch.Tensor:
    """GELU's tanh approximation with sqrt(2 / pi) folded into a constant (HF's gelu_fast)."""
    return 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)))


ACTIVATION_FUNCTIONS = {
    "gelu": nn.functional.gelu,
    "gelu_new": new_gelu,
    "gelu_fast": gelu_fast,
    "gelu_pytorch_tanh": lambda x: nn.functional.gelu(x, approximate="tanh"),
    "relu": nn.functional.relu,
    "silu": nn.functional.silu,
    "swish": nn.functional.silu,
}


def additive_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, S) of 1/0 -> (B, 1, 1, S) of 0/most-negative, as HF's eager attention uses."""
    mask = attention_mask[:, None, None, :].to(dtype)
    return (1.0 - mask) * torch.finfo(dtype).min


def classifier_dropout(config: AlbertConfig) -> nn.Dropout:
    """HF allows classifier_dropout_prob None (token classification then uses hidden_dropout_prob)."""
    probability = config.classifier_dropout_prob
    return nn.Dropout(config.hidden_dropout_prob if probability is None else probability)


class AlbertEmbeddings(nn.Module):
    """Word, position and token type embeddings (E wide), summed, layer-normed and dropped out."""
    def __init__(self, config: AlbertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.embedding_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.embedding_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.embedding_size)
        self.LayerNorm = nn.LayerNorm(config.embedding_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        """Embeddings (B, S, E) of (B, S) ids and token types, positions counted from 0."""
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)[None, :]  # (1, S)
        embeddings = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        embeddings = embeddings + self.position_embeddings(positions)  # (B, S, E)
        return self.dropout(self.LayerNorm(embeddings))


class AlbertAttention(nn.Module):
    """Multi-head self-attention with its output projection, residual connection and LayerNorm."""
    def __init__(self, config: AlbertConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_size = config.head_size
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.attention_dropout = nn.Dropout(config.attention_probs_dropout_prob)
        self.output_dropout = nn.Dropout(config.hidden_dropout_prob)
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, S, H) -> (B, N, S, D): one slice per attention head."""
        batch, seq, _ = x.shape
        return x.view(batch, seq, self.num_heads, self.head_size).transpose(1, 2)  # (B, N, S, D)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden after attention, residual and LayerNorm (B, S, H), the softmax probabilities (B, N, S, S))."""
        query = self.split_heads(self.query(hidden))
        key = self.split_heads(self.key(hidden))
        value = self.split_heads(self.value(hidden))
        scores = torch.matmul(query, key.transpose(-1, -2)) / math.sqrt(self.head_size)  # (B, N, S, S)
        probs = self.attention_dropout(torch.softmax(scores + mask, dim=-1))
        context = torch.matmul(probs, value).transpose(1, 2).flatten(2)  # (B, S, H)
        projected = self.output_dropout(self.dense(context))
        return self.LayerNorm(hidden + projected), probs


class AlbertLayer(nn.Module):
    """One transformer layer: attention, then the feed-forward network with its residual connection and LayerNorm."""
    def __init__(self, config: AlbertConfig):
        super().__init__()
        self.attention = AlbertAttention(config)
        self.ffn = nn.Linear(config.hidden_size, config.intermediate_size)
        self.ffn_output = nn.Linear(config.intermediate_size, config.hidden_size)
        self.activation = ACTIVATION_FUNCTIONS[config.hidden_act]
        self.full_layer_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the layer's output (B, S, H), its attention softmax (B, N, S, S))."""
        attended, probs = self.attention(hidden, mask)  # (B, S, H), (B, N, S, S)
        feed_forward = self.dropout(self.ffn_output(self.activation(self.ffn(attended))))
        return self.full_layer_layer_norm(feed_forward + attended), probs


class AlbertLayerGroup(nn.Module):
    """The shared piece: inner_group_num layers, reused at several depths."""

    def __init__(self, config: AlbertConfig):
        super().__init__()
        self.albert_layers = nn.ModuleList(AlbertLayer(config) for _ in range(config.inner_group_num))

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """hidden (B, S, H) after each of the group's inner layers in turn."""
        for layer in self.albert_layers:
            hidden, _ = layer(hidden, mask)
        return hidden  # (B, S, H)

    def with_attentions(self, hidden: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden (B, S, H), each inner layer's softmax stacked (I, B, N, S, S))."""
        attentions = []
        for layer in self.albert_layers:
            hidden, probs = layer(hidden, mask)
            attentions.append(probs)
        return hidden, torch.stack(attentions)


class AlbertTransformer(nn.Module):
    """The encoder: the E->H mapping (applied by AlbertModel.embed) and the layer groups the layers share."""
    def __init__(self, config: AlbertConfig):
        super().__init__()
        self.config = config
        self.embedding_hidden_mapping_in = nn.Linear(config.embedding_size, config.hidden_size)
        self.albert_layer_groups = nn.ModuleList(AlbertLayerGroup(config) for _ in range(config.num_hidden_groups))

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor, hidden_states: list | None = None,
                attentions: list | None = None) -> torch.Tensor:
        """(B, S, H) after every layer; given lists receive, per layer-group call, its output (B, S, H)
        (hidden_states) and its inner layers' softmaxes (I, B, N, S, S) (attentions)."""
        for layer in range(self.config.num_hidden_layers):
            group = self.albert_layer_groups[self.config.group_of_layer(layer)]
            if attentions is None:
                hidden = group(hidden, mask)
            else:
                hidden, probs = group.with_attentions(hidden, mask)
                attentions.append(probs)
            if hidden_states is not None:
                hidden_states.append(hidden)
        return hidden


class AlbertModel(nn.Module):
    """ALBERT without a task head: embeddings, encoder and (unless add_pooling_layer is False) the pooler."""
    def __init__(self, config: AlbertConfig, add_pooling_layer: bool = True):
        super().__init__()
        self.config = config
        self.embeddings = AlbertEmbeddings(config)
        self.encoder = AlbertTransformer(config)
        self.pooler = nn.Linear(config.hidden_size, config.hidden_size) if add_pooling_layer else None

    def embed(self, input_ids, attention_mask, token_type_ids) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden (B, S, H) after the embeddings and the E->H mapping, additive mask (B, 1, 1, S))."""
        embedded = self.embeddings(input_ids, token_type_ids)  # (B, S, E)
        hidden = self.encoder.embedding_hidden_mapping_in(embedded)  # (B, S, H)
        return hidden, additive_mask(attention_mask, hidden.dtype)

    def pool(self, hidden: torch.Tensor) -> torch.Tensor:
        """The pooler's output (B, H): tanh of a dense layer over each sequence's first ([CLS]) token."""
        return torch.tanh(self.pooler(hidden[:, 0]))  # (B, H)


class AlbertMLMHead(nn.Module):
    """The masked-LM head: dense, activation and LayerNorm down to E, then the decoder over the vocabulary."""
    def __init__(self, config: AlbertConfig):
        super().__init__()
        self.LayerNorm = nn.LayerNorm(config.embedding_size, eps=config.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.dense = nn.Linear(config.hidden_size, config.embedding_size)
        self.decoder = nn.Linear(config.embedding_size, config.vocab_size)
        self.decoder.bias = self.bias
        self.activation = ACTIVATION_FUNCTIONS[config.hidden_act]

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits (B, S, V) of hidden (B, S, H)."""
        hidden = self.LayerNorm(self.activation(self.dense(hidden)))  # (B, S, E)
        # on 2-D input the tied decoder traces as Gemm(transB=1) reading the word embeddings as they are; the 3-D
        # form is MatMul(x, Transpose(W)), which onnxruntime folds into a second, transposed copy of the table
        return self.decoder(hidden.flatten(0, -2)).unflatten(0, hidden.shape[:-1])  # (B, S, V); (N, V) from (N, E)


class AlbertSOPHead(nn.Module):
    """The sentence-order prediction head: dropout and a 2-way classifier over the pooled output."""
    def __init__(self, config: AlbertConfig):
        super().__init__()
        self.dropout = classifier_dropout(config)
        self.classifier = nn.Linear(config.hidden_size, 2)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """The two sentence-order logits (B, 2) of the pooled output (B, H)."""
        return self.classifier(self.dropout(pooled))  # (B, 2)


class AlbertForTask(nn.Module):
    """ALBERT with one task head. forward(ids, mask, types) -> {ONNX output name: tensor}."""

    pooled = True  # whether the base model has (and the head uses) the pooler
    output_hidden_states = False  # defaults of forward's arguments of the same names
    output_attentions = False

    def __init__(self, config: AlbertConfig):
        super().__init__()
        self.config = config
        self.albert = AlbertModel(config, add_pooling_layer=self.pooled)

    @property
    def task(self) -> str:
        """The task this model serves: the one model_for_task built it for, else the first whose config names its
        class (runtime.taskspec TaskConfig.torch_head)."""
        return getattr(self, "_task", None) or next(
            spec.name for spec in TASKS.values() if spec.torch_head == type(self).__name__)

    def head(self, hidden: torch.Tensor) -> dict[str, torch.Tensor]:
        """{ONNX output name: tensor} of the encoder's output (B, S, H); each task's class computes its own."""
        raise NotImplementedError

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, output_hidden_states=None,
                output_attentions=None) -> dict[str, torch.Tensor]:
        """{ONNX output name: tensor} of the inputs (mask all ones, types all zeros where left out); with
        hidden_states and attentions too where asked for."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        hidden, mask = self.albert.embed(input_ids, attention_mask, token_type_ids)
        want_hidden = self.output_hidden_states if output_hidden_states is None else output_hidden_states
        want_attentions = self.output_attentions if output_attentions is None else output_attentions
        hidden_states, attentions = ([hidden] if want_hidden else None), ([] if want_attentions else None)
        outputs = self.head(self.albert.encoder(hidden, mask, hidden_states, attentions))
        if want_hidden:
            outputs["hidden_states"] = torch.stack(hidden_states)  # (L+1, B, S, H)
        if want_attentions:
            outputs["attentions"] = torch.cat(attentions)  # (L*I, B, N, S, S)
        return outputs

    def tie_weights(self) -> None:
        """The MLM decoder shares the word embedding matrix (HF's tie_word_embeddings)."""
        predictions = getattr(self, "predictions", None)
        if predictions is not None and self.config.tie_word_embeddings:
            predictions.decoder.weight = self.albert.embeddings.word_embeddings.weight


class AlbertForFeatureExtraction(AlbertForTask):
    """ALBERT's last hidden state and pooler output, without a task head."""
    def head(self, hidden):
        return {"last_hidden_state": hidden, "pooler_output": self.albert.pool(hidden)}


class AlbertForPreTraining(AlbertForTask):
    """ALBERT with the masked-LM and sentence-order heads it is pre-trained with."""
    def __init__(self, config):
        super().__init__(config)
        self.predictions = AlbertMLMHead(config)
        self.sop_classifier = AlbertSOPHead(config)
        self.tie_weights()

    def head(self, hidden):
        return {
            "prediction_logits": self.predictions(hidden),
            "sop_logits": self.sop_classifier(self.albert.pool(hidden)),
        }


class AlbertForMaskedLM(AlbertForTask):
    """ALBERT with the masked-LM head (no pooler)."""
    pooled = False

    def __init__(self, config):
        super().__init__(config)
        self.predictions = AlbertMLMHead(config)
        self.tie_weights()

    def head(self, hidden):
        return {"logits": self.predictions(hidden)}


class AlbertForSequenceClassification(AlbertForTask):
    """ALBERT with a classifier over the pooled output: one logit per label."""
    def __init__(self, config):
        super().__init__(config)
        self.dropout = classifier_dropout(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)

    def head(self, hidden):
        return {"logits": self.classifier(self.dropout(self.albert.pool(hidden)))}  # (B, L)


class AlbertForTokenClassification(AlbertForTask):
    """ALBERT with a classifier over every token: one logit per label (no pooler)."""
    pooled = False

    def __init__(self, config):
        super().__init__(config)
        self.dropout = classifier_dropout(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)

    def head(self, hidden):
        return {"logits": self.classifier(self.dropout(hidden))}  # (B, S, L)


class AlbertForQuestionAnswering(AlbertForTask):
    """ALBERT with a start and an end logit per token, for extractive answer spans (no pooler)."""
    pooled = False

    def __init__(self, config):
        super().__init__(config)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)

    def head(self, hidden):
        start, end = self.qa_outputs(hidden).unbind(-1)  # (B, S) each
        return {"start_logits": start, "end_logits": end}


class AlbertForMultipleChoice(AlbertForTask):
    """Inputs (B, C, S); the choices are folded into the batch and unfolded in the head."""

    def __init__(self, config):
        super().__init__(config)
        self.dropout = classifier_dropout(config)
        self.classifier = nn.Linear(config.hidden_size, 1)

    def head(self, hidden):
        return {"choice_scores": self.classifier(self.dropout(self.albert.pool(hidden)))}  # (B*C, 1)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, output_hidden_states=None,
                output_attentions=None):
        """hidden_states and attentions keep the choices folded into the batch (B*C), as transformers does."""
        if input_ids.dim() != 3:
            shape = tuple(input_ids.shape)
            raise InputShapeError(f"multiple-choice inputs are (batch, choices, sequence); got shape {shape}")
        choices = input_ids.shape[1]
        flat = lambda t: None if t is None else t.reshape(-1, t.shape[-1])  # noqa: E731
        outputs = super().forward(flat(input_ids), flat(attention_mask), flat(token_type_ids), output_hidden_states,
                                  output_attentions)
        return {"logits": outputs.pop("choice_scores").reshape(-1, choices), **outputs}  # (B, C)


# task -> its reference class, as the task config names it (TaskConfig.torch_head)
TASK_MODELS = task_table(lambda spec: [(spec.name, globals()[spec.torch_head])])


def model_for_task(config: AlbertConfig, task: str) -> AlbertForTask:
    """The reference model of `task` for `config`, its weights as initialized; ConfigError for a task with no head."""
    if task not in TASK_MODELS:
        raise ConfigError(f"no ALBERT head for task {task!r}")
    model = TASK_MODELS[task](config)
    model._task = task
    return model
