"""What every task head sees: a tokenizer, a runner that batches features through the backend, the config."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from tokenizers import Tokenizer

Feature = dict[str, np.ndarray]  # unbatched model inputs: input_ids/attention_mask/token_type_ids, (S,) or (C, S)


class Runner(Protocol):
    def run(self, features: list[Feature]) -> list[dict[str, np.ndarray]]:
        """Batch the features (right padding, grouped by length), run the backend, and return one output dict
        per feature, in order, with the batch axis removed and sequence axes cut back to that feature's
        unpadded length."""


@dataclass
class TaskContext:
    tokenizer: Tokenizer  # the bundle's tokenizer.json, no truncation/padding configured
    runner: Runner
    config: dict[str, Any]  # the bundle's HF-style config.json
    max_length: int  # model_max_length (max positions usable by the tokenizer)
    special_tokens: dict[str, str]  # role -> token text: "cls", "sep", "pad", "mask", "unk"
    clean_up_tokenization_spaces: bool = False  # HF's decode option (tokenizer_config.json), for decoded text

    @property
    def id2label(self) -> dict[int, str]:
        return {int(k): v for k, v in self.config.get("id2label", {}).items()}
