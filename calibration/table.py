"""The calibration table written into the bundle: tensor -> amax and int8 scale, with how it was made."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from graphs.passes.qdq import int8_scale

from .errors import CalibrationTableError

CALIBRATION_TABLE = "calibration.json"
TABLE_FORMAT = 1


@dataclass
class CalibrationTable:
    """The ranges calibration chose and how: written to the bundle as calibration.json."""
    method: str
    percentile: float | None
    samples: int  # examples calibrated on
    batches: int
    amax: dict[str, float]  # activation tensor -> amax (|x| range mapped to int8 127)
    layers: str = ""  # "unrolled" (per-layer scales) | "loop" (one scale per body tensor, max over iterations)
    weights: str = "int8 symmetric per output channel, scales stored in the graph"
    extra: dict = field(default_factory=dict)

    def to_json(self) -> str:
        """The table as calibration.json holds it, with each tensor's int8 scale beside its amax."""
        data = asdict(self)
        data["format"] = TABLE_FORMAT
        data["tensors"] = {name: {"amax": value, "scale": float(int8_scale(value))}
                           for name, value in data.pop("amax").items()}
        return json.dumps(data, indent=1) + "\n"

    def save(self, path: str | Path) -> Path:
        """Write the table to `path` (a directory gets calibration.json); the path written."""
        path = Path(path)
        if path.is_dir():
            path = path / CALIBRATION_TABLE
        path.write_text(self.to_json())
        return path

    @classmethod
    def load(cls, path: str | Path) -> "CalibrationTable":
        """Read a table `save` wrote (a directory: its calibration.json), or raise CalibrationTableError."""
        path = Path(path)
        if path.is_dir():
            path = path / CALIBRATION_TABLE
        try:
            data = json.loads(path.read_text())
            if data.pop("format", None) != TABLE_FORMAT:
                raise CalibrationTableError(f"format is not {TABLE_FORMAT}")
            data["amax"] = {name: float(entry["amax"]) for name, entry in data.pop("tensors").items()}
            return cls(**data)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CalibrationTableError(f"{path} is not a calibration table: {exc}") from exc
