"""Write a bundle atomically: every file goes into a hidden temporary sibling, which is renamed into place
only when complete (manifest last). A failed or interrupted export leaves no bundle at the output path; a
process killed outright can leave a hidden `.NAME.partial-*` sibling, never a half bundle.

Missing parent directories are created. An existing output path: an empty directory is replaced; a non-empty one is refused unless overwrite=True,
and even then only when it is a previous bundle (it has a manifest.json), so a mistyped --output never deletes
an unrelated folder.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import onnx

from graphs.size import stored_tensors
from graphs.walk import tensor_nbytes
from runtime.bundle import MANIFEST, MODEL, Manifest, sha256_file

EXTERNAL_DATA = MODEL + ".data"
EXTERNAL_DATA_THRESHOLD = 2_000_000_000  # protobuf cannot serialize a model of 2 GiB; stay below it


class OutputExistsError(FileExistsError):
    """The output path holds something the export will not replace."""

    def __str__(self) -> str:
        return self.args[0]


def check_output_dir(output_dir: str | Path, overwrite: bool = False) -> Path:
    """Fail early (before any tracing) when the output path cannot take a bundle."""
    output = Path(output_dir).expanduser().absolute()
    if output.exists() and not output.is_dir():
        raise OutputExistsError(f"output {output} exists and is a file; choose another --output")
    if output.is_dir() and any(output.iterdir()):
        if not overwrite:
            raise OutputExistsError(
                f"output directory {output} already exists and is not empty; choose another --output, "
                "or pass --overwrite to replace a previous bundle"
            )
        if not (output / MANIFEST).is_file():
            raise OutputExistsError(
                f"output directory {output} is not empty and is not an albert-export bundle (no {MANIFEST}); "
                "--overwrite only replaces bundles, choose another --output"
            )
    for parent in output.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputExistsError(f"{parent} is a file, so {output} cannot be created; choose another --output")
            break
    return output


def save_model(model: onnx.ModelProto, directory: Path, threshold: int = EXTERNAL_DATA_THRESHOLD) -> list[Path]:
    """model.onnx, plus model.onnx.data when the tensors exceed `threshold` bytes. The proto may be changed
    (external data moves tensor bytes out of it): reload from the file if needed."""
    path = directory / MODEL
    tensor_bytes = sum(tensor_nbytes(tensor) for _, tensor in stored_tensors(model))
    if tensor_bytes <= threshold:
        onnx.save_model(model, str(path))
        return [path]
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=EXTERNAL_DATA, size_threshold=1024)
    return [path, directory / EXTERNAL_DATA]


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class BundleWriter:
    """with BundleWriter(out) as bundle: write into bundle.path ...; bundle.commit(manifest) -> out."""

    def __init__(self, output_dir: str | Path, overwrite: bool = False):
        self.output = check_output_dir(output_dir, overwrite)
        self.overwrite = overwrite
        self.path: Path | None = None
        self.committed = False

    def __enter__(self) -> "BundleWriter":
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix=f".{self.output.name}.partial-", dir=self.output.parent))
        return self

    def __exit__(self, *exc_info) -> None:
        if not self.committed and self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)

    def commit(self, manifest: Manifest) -> Path:
        """Checksum every file, write manifest.json, rename the directory into place."""
        manifest.files = {
            file.name: sha256_file(file) for file in sorted(self.path.iterdir()) if file.name != MANIFEST
        }
        (self.path / MANIFEST).write_text(manifest.to_json())
        os.chmod(self.path, 0o777 & ~current_umask())  # mkdtemp creates 0700; a bundle gets mkdir's mode
        check_output_dir(self.output, self.overwrite)  # the world may have changed while we exported
        if self.output.is_dir() and any(self.output.iterdir()):
            self.replace_previous_bundle()
        else:
            if self.output.is_dir():
                self.output.rmdir()
            os.replace(self.path, self.output)
        self.committed = True
        return self.output

    def replace_previous_bundle(self) -> None:
        old = Path(tempfile.mkdtemp(prefix=f".{self.output.name}.old-", dir=self.output.parent))
        old.rmdir()
        os.replace(self.output, old)
        try:
            os.replace(self.path, self.output)
        except BaseException:
            os.replace(old, self.output)
            raise
        shutil.rmtree(old, ignore_errors=True)
