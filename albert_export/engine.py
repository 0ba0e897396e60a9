"""ONNX -> TensorRT plan, strongly typed: precision comes from the graph (fp16 weights, Q/DQ), never from
builder flags (TensorRT 11 and TensorRT-RTX removed them).

Two flavours: `tensorrt_rtx` (PyPI; builds ahead of time on a CPU-only machine for the compute capabilities
asked for; engines run on 8.0, 8.6, 8.9 and 12.x, not Hopper) and NVIDIA's datacenter `tensorrt` (10.x/11.x;
needs a GPU at build time and targets the GPU it runs on).
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from runtime.bundle import EngineInfo
from runtime.extras import first_importable, install_command
from runtime.taskspec import INPUT_NAMES

from .errors import ExportError, ExportOptionError
from .progress import LOGGER, bars_shown, log, stdout_to_stderr

ENGINES = ("onnxruntime", "tensorrt")  # onnxruntime: the bundle's model.onnx alone; tensorrt: + engine.plan
RTX_COMPUTE_CAPABILITIES = ("8.0", "8.6", "8.9", "12.0")
DEFAULT_SHAPES = "1x1:8x128:32xP"  # P: the model's max_position_embeddings (multiple choice: 1x2x1:8x4x128:16x8xP)
DIMS = re.compile(r"^\d+(x\d+)+$")


class EngineError(ExportError, RuntimeError):
    """TensorRT is missing, refused the graph, or the requested shapes are inconsistent."""


@dataclass(frozen=True)
class ShapeProfile:
    """A TensorRT optimization profile: the minimum, optimum and maximum dims every input is built for."""
    minimum: tuple[int, ...]
    optimum: tuple[int, ...]
    maximum: tuple[int, ...]

    def as_lists(self) -> list[list[int]]:
        """[min, opt, max] as lists of ints, as the engine info records the profile of each input."""
        return [list(self.minimum), list(self.optimum), list(self.maximum)]


def check_engine(engine: str, shapes: str | None, optimize: str) -> None:
    """The engine is known, --shapes goes with TensorRT, the graph will be one TensorRT can parse."""
    if engine not in ENGINES:
        raise ExportOptionError(f"--engine {engine!r} is not an engine; choose {' or '.join(ENGINES)}")
    if engine != "tensorrt":
        if shapes is not None:
            raise ExportOptionError("--shapes sets the TensorRT optimization profile; add --engine tensorrt")
    elif optimize.startswith("onnxruntime"):
        # TensorRT's parser reads com.microsoft Attention as ONNX's own Attention op and refuses it
        raise ExportOptionError(f"--optimize {optimize} writes onnxruntime-only ops (com.microsoft Attention, "
                                "FastGelu) that TensorRT cannot build; use --optimize portable or none with "
                                "--engine tensorrt (TensorRT fuses attention itself)")


def parse_shapes(text: str, rank: int = 2, max_positions: int | None = None) -> ShapeProfile:
    """'1x1:8x128:32x384' -> min/opt/max dims (rank 3, BxCxS, for multiple choice)."""
    parts = text.strip().split(":")
    layout = "BxCxS" if rank == 3 else "BxS"
    if len(parts) != 3 or not all(DIMS.match(p) for p in parts):
        raise EngineError(f"--shapes {text!r} must be MIN:OPT:MAX, each {layout}, e.g. 1x1:8x128:32x384")
    dims = [tuple(int(d) for d in p.split("x")) for p in parts]
    if any(len(d) != rank for d in dims):
        raise EngineError(f"--shapes {text!r}: each of MIN:OPT:MAX needs {rank} dims ({layout}) for this task")
    if any(v < 1 for d in dims for v in d):
        raise EngineError(f"--shapes {text!r}: every dimension must be at least 1")
    if not all(a <= b <= c for a, b, c in zip(*dims)):
        raise EngineError(f"--shapes {text!r}: need MIN <= OPT <= MAX in every dimension")
    profile = ShapeProfile(*dims)
    return profile if max_positions is None else fitting_positions(profile, max_positions, text)


def fitting_positions(profile: ShapeProfile, max_positions: int, text: str) -> ShapeProfile:
    """The profile parsed from --shapes `text`, once the model's positions are known: its longest sequence fits."""
    if profile.maximum[-1] > max_positions:
        raise EngineError(
            f"--shapes {text!r}: a sequence of {profile.maximum[-1]} exceeds the model's {max_positions} positions"
        )
    return profile


def default_profile(rank: int, max_positions: int) -> ShapeProfile:
    """Batch 1..32 (multiple choice: 1..16 items of 2..8 choices), sequence 1..all positions, tuned at 128."""
    typical = min(128, max_positions)
    if rank == 3:
        return ShapeProfile((1, 2, 1), (8, 4, typical), (16, 8, max_positions))
    return ShapeProfile((1, 1), (8, typical), (32, max_positions))


def import_tensorrt(flavour: str = "auto"):
    """The TensorRT module of `flavour` (auto: tensorrt_rtx, else tensorrt); EngineError where none is installed."""
    names = {"auto": ("tensorrt_rtx", "tensorrt"), "tensorrt_rtx": ("tensorrt_rtx",), "tensorrt": ("tensorrt",)}
    if flavour not in names:
        raise EngineError(f"unknown TensorRT flavour {flavour!r}; use tensorrt_rtx or tensorrt")
    trt = first_importable(names[flavour])
    if trt is not None:
        return trt
    raise EngineError(
        f"no TensorRT found: {install_command('tensorrt')} (tensorrt-rtx, builds on CPU-only machines), "
        "or NVIDIA's datacenter `tensorrt` from NVIDIA's package index"
    )


def flavour_of(trt) -> str:
    """Which TensorRT the module `trt` is: tensorrt_rtx or tensorrt."""
    return "tensorrt_rtx" if trt.__name__.startswith("tensorrt_rtx") else "tensorrt"


def logger_for(trt):
    """TensorRT's messages through the albert_export logger (its default Logger prints to stdout)."""
    severity = trt.ILogger.Severity
    levels = {severity.INTERNAL_ERROR: logging.ERROR, severity.ERROR: logging.ERROR,
              severity.WARNING: logging.WARNING, severity.INFO: logging.DEBUG, severity.VERBOSE: logging.DEBUG}

    class LoggingLogger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)

        def log(self, level, message):
            for line in str(message).splitlines():  # one prefixed line each, so a log reads line by line
                LOGGER.log(levels.get(level, logging.WARNING), f"{flavour_of(trt)}: {line}")

    return LoggingLogger()


def progress_monitor_for(trt):
    """A tqdm bar per top-level build phase of TensorRT's builder (only when bars are shown)."""
    from tqdm import tqdm

    class BarMonitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self.bars = {}

        def phase_start(self, phase_name, parent_phase, num_steps):
            if parent_phase is None:
                self.bars[phase_name] = tqdm(total=num_steps, desc=f"engine: {phase_name}", leave=False)

        def step_complete(self, phase_name, step):
            if phase_name in self.bars:
                self.bars[phase_name].update(1)
            return True

        def phase_finish(self, phase_name):
            bar = self.bars.pop(phase_name, None)
            if bar is not None:
                bar.close()

    return BarMonitor()


def parse_onnx(trt, builder, logger, onnx_path: Path):
    """The TensorRT network parsed from the ONNX file (strongly typed); EngineError with the parser's errors."""
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")
    flags = 0 if flavour_of(trt) == "tensorrt_rtx" else 1 << int(strongly_typed)  # RTX is always strongly typed
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"TensorRT could not parse {onnx_path.name}: {errors}")
    return network


def set_compute_capabilities(trt, config, wanted: tuple[str, ...]) -> None:
    """Have a tensorrt_rtx builder config target the `wanted` compute capabilities (e.g. 8.0); EngineError for one
    this TensorRT does not know."""
    config.num_compute_capabilities = len(wanted)
    for index, capability in enumerate(wanted):
        member = getattr(trt.ComputeCapability, "SM" + capability.replace(".", ""), None)
        if member is None or not config.set_compute_capability(member, index):
            supported = [m for m in dir(trt.ComputeCapability) if m.startswith("SM")]
            raise EngineError(f"compute capability {capability} is not supported by this TensorRT ({supported})")


def engine_from_onnx(
    onnx_path: str | Path,
    profile: ShapeProfile,
    *,
    flavour: str = "auto",
    compute_capabilities: tuple[str, ...] | None = None,
    log=log,
) -> tuple[bytes, EngineInfo]:
    """Build a serialized plan with one optimization profile shared by the three inputs. TensorRT's messages go
    to the albert_export logger, and whatever its native code prints goes to stderr, never to stdout."""
    trt = import_tensorrt(flavour)
    with stdout_to_stderr():
        return _build(trt, Path(onnx_path), profile, compute_capabilities, log)


def _build(trt, onnx_path: Path, profile: ShapeProfile, compute_capabilities, log) -> tuple[bytes, EngineInfo]:
    logger = logger_for(trt)
    builder = trt.Builder(logger)
    network = parse_onnx(trt, builder, logger, onnx_path)
    config = builder.create_builder_config()
    if bars_shown() and hasattr(trt, "IProgressMonitor"):
        config.progress_monitor = progress_monitor_for(trt)
    optimization_profile = builder.create_optimization_profile()
    names = [network.get_input(i).name for i in range(network.num_inputs)]
    for name in names:
        if name not in INPUT_NAMES:
            raise EngineError(f"{onnx_path.name} has an unexpected input {name!r}")
        optimization_profile.set_shape(name, profile.minimum, profile.optimum, profile.maximum)
    config.add_optimization_profile(optimization_profile)
    if flavour_of(trt) == "tensorrt_rtx":
        compute_capabilities = tuple(compute_capabilities or RTX_COMPUTE_CAPABILITIES)
        set_compute_capabilities(trt, config, compute_capabilities)
    else:
        compute_capabilities = tuple(compute_capabilities or ("current",))
    log(f"building {flavour_of(trt)} {trt.__version__} engine for compute capabilities "
        f"{', '.join(compute_capabilities)} …")
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineError("TensorRT failed to build the engine; see the TensorRT messages above")
    info = EngineInfo(
        flavour=flavour_of(trt),
        version=trt.__version__,
        profiles=[{name: profile.as_lists() for name in names}],
        compute_capabilities=list(compute_capabilities),
    )
    return bytes(plan), info
