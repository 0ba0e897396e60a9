"""The bundle directory and its manifest: the schema lives here (the reader); the build side writes it.

bundle/
  model.onnx [+ model.onnx.data]   the graph (external data only past 2 GB)
  tokenizer.json                   a `tokenizers` tokenizer
  config.json                      HF-style config, with id2label
  manifest.json                    this schema, "format": 1
  engine.plan                      optional TensorRT engine
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MODEL = "model.onnx"
TOKENIZER = "tokenizer.json"
CONFIG = "config.json"
ENGINE = "engine.plan"


class BundleError(Exception):
    """A bundle that is missing, incomplete, corrupt or of an unknown format."""


@dataclass
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: "int64", "float32", "float16"
    dims: list[str | int]


@dataclass
class TokenizerSettings:
    max_length: int
    do_lower_case: bool
    keep_accents: bool = False
    special_tokens: dict[str, str] = field(default_factory=dict)  # role -> token, e.g. "mask" -> "[MASK]"
    clean_up_tokenization_spaces: bool = False  # tokenizer_config.json's decode option (transformers default: False)


@dataclass
class Validation:
    tolerance: dict[str, float]  # output -> atol used
    max_abs_diff: dict[str, float]
    max_rel_diff: dict[str, float] = field(default_factory=dict)
    shapes: list[list[int]] = field(default_factory=list)  # input shapes tried
    reference: str = "pytorch"


@dataclass
class EngineInfo:
    flavour: str  # "tensorrt" | "tensorrt_rtx"
    version: str
    profiles: list[dict[str, list[list[int]]]]  # per profile: input name -> [min dims, opt dims, max dims]
    compute_capabilities: list[str]


@dataclass
class Manifest:
    task: str
    layers: str  # "unrolled" | "loop"
    precision: str  # "fp32" | "fp16" | "int8"
    opset: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    tokenizer: TokenizerSettings
    files: dict[str, str]  # file name -> sha256
    producer: dict[str, str]  # {"name": "albert-export", "version": ...}
    validation: Validation | None = None
    optimize: str = "none"
    engine: EngineInfo | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # calibration report, accuracy report, ...
    format: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Manifest":
        fmt = data.get("format")
        if fmt != FORMAT_VERSION:
            raise BundleError(
                f"manifest format {fmt!r} is not supported (this runtime reads format {FORMAT_VERSION}); "
                "re-export the bundle with a matching albert-export"
            )
        try:
            data = dict(data)
            data["inputs"] = [TensorSpec(**t) for t in data["inputs"]]
            data["outputs"] = [TensorSpec(**t) for t in data["outputs"]]
            data["tokenizer"] = TokenizerSettings(**data["tokenizer"])
            if data.get("validation") is not None:
                data["validation"] = Validation(**data["validation"])
            if data.get("engine") is not None:
                data["engine"] = EngineInfo(**data["engine"])
            return cls(**data)
        except (KeyError, TypeError) as exc:
            raise BundleError(f"manifest.json is malformed: {exc}") from exc


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Bundle:
    root: Path
    manifest: Manifest
    config: dict[str, Any]

    @property
    def model_path(self) -> Path:
        return self.root / MODEL

    @property
    def tokenizer_path(self) -> Path:
        return self.root / TOKENIZER

    @property
    def engine_path(self) -> Path | None:
        path = self.root / ENGINE
        return path if path.exists() else None

    @property
    def id2label(self) -> dict[int, str]:
        return {int(k): v for k, v in self.config.get("id2label", {}).items()}


def load_bundle(path: str | Path, verify: bool = True) -> Bundle:
    """Read a bundle directory; with verify, every file's sha256 must match the manifest."""
    root = Path(path)
    if not root.is_dir():
        raise BundleError(f"bundle {str(root)!r} is not a directory; pass the folder albert-export wrote")
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"{manifest_path} is missing: {root} is not a complete albert-export bundle")
    try:
        manifest = Manifest.from_dict(json.loads(manifest_path.read_text()))
    except json.JSONDecodeError as exc:
        raise BundleError(f"{manifest_path} is not valid JSON ({exc}); re-export the bundle") from exc
    for required in (MODEL, TOKENIZER, CONFIG):
        if required not in manifest.files:
            raise BundleError(f"manifest lists no {required}; the bundle is incomplete, re-export it")
    if verify:
        for name, expected in manifest.files.items():
            file = root / name
            if not file.is_file():
                raise BundleError(f"{file} is missing; the bundle is incomplete, re-export it")
            actual = sha256_file(file)
            if actual != expected:
                raise BundleError(
                    f"checksum mismatch for {name}: manifest says {expected[:12]}…, file has {actual[:12]}…; "
                    "the file was changed or corrupted, re-export the bundle"
                )
    try:
        config = json.loads((root / CONFIG).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BundleError(f"{root / CONFIG} cannot be read: {exc}") from exc
    return Bundle(root=root, manifest=manifest, config=config)
