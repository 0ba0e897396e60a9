"""The bundle directory and its manifest: the schema lives here (the reader); the build side writes it.

bundle/
  model.onnx [+ model.onnx.data]   the graph (external data only past 2 GB)
  tokenizer.json                   a `tokenizers` tokenizer
  config.json                      HF-style config, with id2label
  manifest.json                    this schema, "format": 1
  engine.plan                      optional TensorRT engine

Reading is verifying: every name the manifest lists must be a plain file name inside the bundle (no path, no
symlink out of it); a file's recorded size is checked before it is hashed; the files the runtime reads
(model.onnx and the external data it names, tokenizer.json, config.json, engine.plan) must be listed and match
their sha256, and nothing unlisted is read. Other listed files are verified when their size is recorded.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .arguments import is_integer
from .errors import BundleError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MODEL = "model.onnx"
TOKENIZER = "tokenizer.json"
CONFIG = "config.json"
ENGINE = "engine.plan"
READ_BY_RUNTIME = (MODEL, TOKENIZER, CONFIG, ENGINE)
LABEL_ID = re.compile(r"[0-9]+")  # ASCII digits: "²" and "٣" are digits to str.isdigit()/int(), not label ids


@dataclass
class TensorSpec:
    """One model input or output as the manifest lists it: name, numpy dtype and dims (symbolic or fixed)."""
    name: str
    dtype: str  # numpy dtype name: "int64", "float32", "float16"
    dims: list[str | int]


@dataclass
class TokenizerSettings:
    """How the bundle's tokenizer is applied: max length, casing, accents, special tokens, decode cleanup."""
    max_length: int
    do_lower_case: bool
    keep_accents: bool = False
    special_tokens: dict[str, str] = field(default_factory=dict)  # role -> token, e.g. "mask" -> "[MASK]"
    clean_up_tokenization_spaces: bool = False  # tokenizer_config.json's decode option (transformers default: False)


@dataclass
class Validation:
    """What the export's check against the reference found: tolerances, differences and the shapes tried."""
    tolerance: dict[str, float]  # output -> atol used
    max_abs_diff: dict[str, float]
    max_rel_diff: dict[str, float] = field(default_factory=dict)
    shapes: list[list[int]] = field(default_factory=list)  # input shapes tried
    reference: str = "pytorch"
    # INT8: task-level top-1 agreement with the fp32 graph on held-out examples, and the threshold each met
    agreement: dict[str, float] = field(default_factory=dict)
    min_agreement: dict[str, float] = field(default_factory=dict)


@dataclass
class EngineInfo:
    """The TensorRT engine a bundle carries: flavour, version, optimization profiles, GPU compute capabilities."""
    flavour: str  # "tensorrt" | "tensorrt_rtx"
    version: str
    profiles: list[dict[str, list[list[int]]]]  # per profile: input name -> [min dims, opt dims, max dims]
    compute_capabilities: list[str]


@dataclass
class Manifest:
    """manifest.json: what a bundle holds (task, layers, precision, opset, tensors) and how it was made."""
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
    sizes: dict[str, int] = field(default_factory=dict)  # file name -> bytes (absent in older bundles)

    def to_json(self) -> str:
        """The manifest as indented JSON text, ending in a newline."""
        return json.dumps(asdict(self), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, data: Any) -> "Manifest":
        """The manifest in manifest.json's object; BundleError naming what is malformed or of another format."""
        if not isinstance(data, dict):
            raise BundleError("manifest.json is malformed: not a JSON object; re-export the bundle")
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
            manifest = cls(**data)
        except KeyError as exc:
            raise BundleError(f"manifest.json is malformed: {exc.args[0]!r} is missing; re-export the bundle") from None
        except TypeError as exc:
            reason = str(exc).split(")", 1)[-1].strip() or "a field has the wrong shape"  # without "__init__()"
            raise BundleError(f"manifest.json is malformed: {reason}; re-export the bundle") from None
        _check_shapes(manifest)
        return manifest


def _check_shapes(manifest: Manifest) -> None:
    files, sizes = manifest.files, manifest.sizes
    checks = [
        (isinstance(manifest.task, str), "task is not a string"),
        (isinstance(files, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()),
         "files is not a map of file names to sha256 strings"),
        (isinstance(sizes, dict) and all(isinstance(k, str) and is_integer(v) for k, v in sizes.items()),
         "sizes is not a map of file names to byte counts"),
        (all(isinstance(t.name, str) and isinstance(t.dims, list) for t in [*manifest.inputs, *manifest.outputs]),
         "inputs/outputs are not lists of {name, dtype, dims}"),
        (is_integer(manifest.tokenizer.max_length) and manifest.tokenizer.max_length > 0,
         "tokenizer.max_length is not a positive integer"),
        (isinstance(manifest.tokenizer.special_tokens, dict), "tokenizer.special_tokens is not a map"),
    ]
    for ok, problem in checks:
        if not ok:
            raise BundleError(f"manifest.json is malformed: {problem}; re-export the bundle")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """The hex SHA-256 digest of the file at `path`, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Bundle:
    """A loaded bundle: its directory, manifest and model config."""
    root: Path
    manifest: Manifest
    config: dict[str, Any]
    external_data: frozenset[str] | None = None  # the external data files model.onnx names, where load_bundle read them

    @property
    def model_path(self) -> Path:
        """The bundle's model.onnx."""
        return self.root / MODEL

    @property
    def model_bytes(self) -> int:
        """The size of model.onnx and of the external data it names: the weights an engine loads."""
        external = self.external_data if self.external_data is not None else external_data_names(self.model_path)
        names = {MODEL, *external}
        return sum((self.root / name).stat().st_size for name in names)

    @property
    def tokenizer_path(self) -> Path:
        """The bundle's tokenizer file."""
        return self.root / TOKENIZER

    @property
    def engine_path(self) -> Path | None:
        """engine.plan when the manifest lists it (load_bundle verified it); an unlisted one is never used."""
        path = self.root / ENGINE
        if ENGINE in self.manifest.files:
            return path
        if path.exists():
            raise BundleError(
                f"{path} is not listed in manifest.json, so it cannot be verified and is not used; "
                "re-export the bundle with --engine tensorrt"
            )
        return None

    @property
    def id2label(self) -> dict[int, str]:
        """The config's id2label with integer keys (empty when it has none)."""
        return {int(k): v for k, v in self.config.get("id2label", {}).items()}


def load_bundle(path: str | Path, verify: bool = True) -> Bundle:
    """Read a bundle directory; with verify, every file the runtime reads must match its sha256 (see top)."""
    root = Path(path)
    if not root.is_dir():
        raise BundleError(f"bundle {str(root)!r} is not a directory; pass the folder albert-export wrote")
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"{manifest_path} is missing: {root} is not a complete albert-export bundle")
    try:
        manifest = Manifest.from_dict(json.loads(manifest_path.read_bytes()))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise BundleError(f"{manifest_path} is not valid JSON ({_reason(exc)}); re-export the bundle") from None
    for required in (MODEL, TOKENIZER, CONFIG):
        if required not in manifest.files:
            raise BundleError(f"manifest lists no {required}; the bundle is incomplete, re-export it")
    files = {name: bundle_file(root, name) for name in manifest.files}
    external = None
    if verify:
        external = frozenset(external_data_names(files[MODEL]))
        for name in external:
            if name not in manifest.files:
                raise BundleError(
                    f"{MODEL} reads {name!r}, which manifest.json does not list; the bundle was changed, re-export it"
                )
        for name, expected in manifest.files.items():
            if name in manifest.sizes:
                size = files[name].stat().st_size
                if size != manifest.sizes[name]:
                    raise BundleError(
                        f"{name} has {size} bytes, the manifest says {manifest.sizes[name]}; the file was changed "
                        "or corrupted, re-export the bundle"
                    )
            elif name not in READ_BY_RUNTIME and name not in external:
                continue  # not read here, and no size to bound the work of hashing it
            actual = sha256_file(files[name])
            if actual != expected:
                raise BundleError(
                    f"checksum mismatch for {name}: manifest says {expected[:12]}…, file has {actual[:12]}…; "
                    "the file was changed or corrupted, re-export the bundle"
                )
    try:
        config = json.loads(files[CONFIG].read_bytes())
    except (OSError, ValueError, RecursionError) as exc:
        raise BundleError(f"{root / CONFIG} cannot be read ({_reason(exc)}); re-export the bundle") from None
    id2label = config.get("id2label", {}) if isinstance(config, dict) else None
    if not isinstance(id2label, dict) or not all(LABEL_ID.fullmatch(k) and isinstance(v, str) for k, v in id2label.items()):
        raise BundleError(
            f"{root / CONFIG} is not an HF config (a JSON object, id2label a map of label ids to names); "
            "re-export the bundle"
        )
    ids = sorted(int(k) for k in id2label)
    if ids != list(range(len(id2label))):
        problem = (f"two keys name label {next(a for a, b in zip(ids, ids[1:]) if a == b)}" if len(set(ids)) < len(ids)
                   else f"it has no label {min(set(range(len(ids))) - set(ids))}")
        raise BundleError(f"{root / CONFIG}'s id2label must name labels 0 to {len(ids) - 1} once each, but {problem}; "
                          "fix id2label or re-export the bundle")
    return Bundle(root=root, manifest=manifest, config=config, external_data=external)


def bundle_file(root: Path, name: str) -> Path:
    """The listed file `name` inside `root`: a plain name (no directory, no "..", not absolute) of a regular file
    that stays inside the bundle when symlinks are followed."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name or os.path.isabs(name):
        raise BundleError(f"manifest.json lists {name!r}, which is not a file name inside the bundle; refusing it")
    file = root / name
    if not file.is_file():
        raise BundleError(f"{file} is missing; the bundle is incomplete, re-export it")
    if file.resolve().parent != root.resolve():
        raise BundleError(f"{file} is a link to a file outside the bundle; refusing it")
    return file


_LOCATION = re.compile(rb"\n\x08location\x12([\x01-\x7f])")  # StringStringEntryProto{key: "location", value}


def external_data_names(model: Path, chunk: int = 1 << 22) -> set[str]:
    """The external data files an ONNX model names (TensorProto.external_data "location" entries), found in its
    bytes without an ONNX parser: onnxruntime would read each of them."""
    names: set[str] = set()
    tail = b""
    with open(model, "rb") as handle:
        while block := handle.read(chunk):
            data = tail + block
            for match in _LOCATION.finditer(data):
                value = data[match.end(): match.end() + match.group(1)[0]]
                if len(value) == match.group(1)[0]:
                    names.add(value.decode("utf-8", "replace"))
            tail = data[-160:]
    return names


def _reason(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return str(exc)
