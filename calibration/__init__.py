"""INT8 calibration: data -> activation ranges (onnxruntime) -> scales -> the graphs QDQ pass."""
from .data import Example, calibration_batches, load_examples, select
from .errors import CalibrationDataError, CalibrationError, CalibrationTableError
from .quantize import accuracy_report, int8_from_fp32
from .ranges import DEFAULT_PERCENTILE, METHODS, Histogram, collect_histograms, expose, ranges
from .table import CALIBRATION_TABLE, CalibrationTable

__all__ = [
    "CALIBRATION_TABLE", "DEFAULT_PERCENTILE", "METHODS", "CalibrationDataError", "CalibrationError",
    "CalibrationTable", "CalibrationTableError", "Example", "Histogram", "accuracy_report", "calibration_batches",
    "collect_histograms", "expose", "int8_from_fp32", "load_examples", "ranges", "select",
]
