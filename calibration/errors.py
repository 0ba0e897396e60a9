"""The base of every error calibration/ raises on purpose; callers catch it by type (a ValueError, as before)."""


class CalibrationError(ValueError):
    """Calibration that cannot run or cannot give a range (unknown method, no data, a tensor never seen)."""


class CalibrationDataError(CalibrationError):
    """A calibration data file that is missing, unreadable, or holds no usable example."""


class CalibrationTableError(CalibrationError):
    """A file that is not a calibration table this version reads."""
