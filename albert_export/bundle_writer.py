"""Write a bundle atomically: every file goes into a hidden temporary sibling, which is renamed into place
only when complete (manifest last). A failed or interrupted export leaves no bundle at the output path; a
process killed outright can leave a hidden `.NAME.partial-PID-*` sibling, never a half bundle, and the next
export into that folder sweeps it away once it is provably ours and its process is gone.

Missing parent directories are created. An existing output path: an empty directory is replaced; a non-empty one
is refused unless overwrite=True, and even then only when it is provably a bundle albert-export wrote and nobody
changed since: every file in it is listed in its manifest with the same sha256 (pip's rule for RECORD: remove
only what we installed). A symbolic link is followed: the bundle replaces the folder it points to, the link stays.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import tempfile
import threading
import warnings
from pathlib import Path

import onnx

from graphs.size import stored_tensors, tensor_nbytes
from runtime.bundle import FORMAT_VERSION, MANIFEST, MODEL, Manifest, sha256_file

from .errors import ExportError

EXTERNAL_DATA = MODEL + ".data"
EXTERNAL_DATA_THRESHOLD = 2_000_000_000  # protobuf cannot serialize a model of 2 GiB; stay below it
PRODUCER = "albert-export"
MARKER = ".albert-export-partial"  # inside a temporary sibling while it is written: who writes it, from where
TEMPORARY_SIBLING = re.compile(r"^\..+\.(partial|old)-(\d+)-\w+$")  # .NAME.partial-PID-XXXX, .NAME.old-PID-XXXX


class OutputExistsError(ExportError, FileExistsError):
    """The output path holds something the export will not replace, or cannot be written."""

    def __str__(self) -> str:
        return self.args[0]


def why_not_our_bundle(directory: Path) -> str | None:
    """None when `directory` is provably a bundle albert-export wrote and nobody changed since; else the reason."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"it has no {MANIFEST}"
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return f"its {MANIFEST} cannot be read ({getattr(exc, 'strerror', None) or exc})"
    producer = manifest.get("producer") if isinstance(manifest, dict) else None
    if not isinstance(producer, dict) or producer.get("name") != PRODUCER or manifest.get("format") != FORMAT_VERSION:
        return f"its {MANIFEST} was not written by albert-export"
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        return f"its {MANIFEST} does not list its files"
    for entry, relative in walk(directory):
        if entry.is_symlink():
            return f"{relative} is a symbolic link, which albert-export never writes"
        if entry.is_dir():
            if not any(name.startswith(relative + "/") for name in files):
                return f"{relative}/ is a folder albert-export did not write"
        elif not entry.is_file():
            return f"{relative} is not a regular file"
        elif relative != MANIFEST and relative not in files:
            return f"{relative} is not one of its files"
    for name, digest in files.items():
        file = directory / name
        if not file.is_file():
            continue  # deleted by the user: nothing of theirs to lose
        try:
            if sha256_file(file) != digest:
                return f"{name} was changed after albert-export wrote it"
        except OSError as exc:
            return f"{name} cannot be read ({exc.strerror})"
    return None


def proven_ours(directory: Path) -> bool:
    """Whether `directory` is provably a bundle we wrote (why_not_our_bundle finds nothing); unreadable: no."""
    try:
        return why_not_our_bundle(directory) is None
    except OutputExistsError:  # unreadable: not proven
        return False


def walk(directory: Path, prefix: str = ""):
    """(entry, relative posix path) for everything under `directory`, not following symbolic links."""
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError as exc:
        raise OutputExistsError(f"cannot list {directory} ({exc.strerror}); nothing was deleted") from exc
    for entry in entries:
        path, relative = Path(entry.path), prefix + entry.name
        yield path, relative
        if entry.is_dir(follow_symlinks=False):
            yield from walk(path, relative + "/")


def remove_bundle(directory: Path) -> None:
    """Delete the files a bundle's manifest lists, when their content is still ours, then its empty folders.
    Anything else stays, with a warning: a file albert-export did not write is never deleted."""
    try:
        files = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        files = {}
    for name, digest in files.items():
        file = directory / name
        try:
            if file.is_file() and not file.is_symlink() and sha256_file(file) == digest:
                file.unlink()
        except OSError:
            pass
    (directory / MANIFEST).unlink(missing_ok=True)
    remove_empty_folders(directory)


def remove_empty_folders(directory: Path) -> None:
    """Remove the empty folders under `directory`, then it; a warning where it still holds files we did not write."""
    try:
        entries = list(walk(directory))
    except OutputExistsError:
        entries = []
    for entry, _ in reversed(entries):
        if entry.is_dir() and not entry.is_symlink():
            try:
                entry.rmdir()
            except OSError:
                pass
    try:
        directory.rmdir()
    except OSError:
        warnings.warn(f"left {directory}: it holds files albert-export did not write")


def process_alive(pid: int) -> bool:
    """Whether a process with id `pid` exists (one owned by another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, but someone else's
        return True
    return True


def sweep_stale_siblings(parent: Path) -> list[Path]:
    """Remove the temporary siblings of earlier exports in `parent` that were killed before they could clean up:
    only those named as we name them, whose process is gone, and whose content is provably ours (the marker we
    write into a partial one, or a manifest that accounts for every file)."""
    swept = []
    try:
        candidates = sorted(parent.iterdir())
    except OSError:
        return swept
    for candidate in candidates:
        match = TEMPORARY_SIBLING.match(candidate.name)
        if not match or candidate.is_symlink() or not candidate.is_dir():
            continue
        pid = int(match.group(2))
        if pid == os.getpid() or process_alive(pid):
            continue
        if match.group(1) == "partial" and marker_of(candidate) == marker_text(pid):
            for entry in candidate.iterdir():  # what an export writes: plain files at the top level
                if entry.is_file() and not entry.is_symlink():
                    entry.unlink()
            remove_empty_folders(candidate)
        elif proven_ours(candidate):
            remove_bundle(candidate)
        if not candidate.exists():
            swept.append(candidate)
    return swept


def marker_text(pid: int) -> str:
    """The marker a partial bundle holds: the producer, the exporting process's pid and the host, as JSON."""
    return json.dumps({"producer": PRODUCER, "pid": pid, "host": socket.gethostname()})


def marker_of(directory: Path) -> str | None:
    """The marker text in `directory`; None where it has none or it cannot be read."""
    try:
        return (directory / MARKER).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def refuse_unsafe_target(shown: str, target: Path) -> None:
    """The filesystem root, the current directory and its parents are never an output: replacing them would pull
    the folder out from under this process and the user's shell (git refuses to remove the cwd too)."""
    if target == Path(target.anchor):
        raise OutputExistsError(f"--output {shown} is the root of the filesystem; choose a new folder for the bundle")
    try:
        cwd = Path.cwd().resolve()
    except OSError:
        return
    if target == cwd or target in cwd.parents:
        raise OutputExistsError(f"--output {shown} is the current directory or one of its parents; a bundle replaces "
                                "the whole folder, so choose a new folder for it (e.g. --output ./bundle)")


def writable_ancestor(target: Path, shown: str) -> None:
    """The nearest existing ancestor must be a directory we can create entries in (probed: root ignores modes,
    and a read-only filesystem is found only by trying)."""
    for parent in target.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputExistsError(f"{parent} is a file, so {shown} cannot be created; choose another --output")
            try:
                os.rmdir(tempfile.mkdtemp(prefix=".albert-export-probe-", dir=parent))
            except OSError as exc:
                raise OutputExistsError(
                    f"cannot write the bundle {shown}: {parent} is not writable ({exc.strerror}); choose another "
                    "--output") from None
            return


def resolve_output(output_dir: str | Path) -> tuple[Path, Path]:
    """(the path the user gave, made absolute; the real directory to replace, symbolic links followed)."""
    output = Path(output_dir).expanduser().absolute()
    if output.is_symlink() and not output.exists():
        raise OutputExistsError(f"--output {output_dir} is a symbolic link to {os.readlink(output)}, which does not "
                                "exist; remove the link or point it at a folder")
    return output, output.resolve()


def check_output_dir(output_dir: str | Path, overwrite: bool = False) -> Path:
    """Fail early (before any tracing) when the output path cannot take a bundle. Returns the absolute path."""
    output, target = resolve_output(output_dir)
    shown = str(output)
    if target.exists() and not target.is_dir():
        raise OutputExistsError(f"output {shown} exists and is a file; choose another --output")
    refuse_unsafe_target(shown, target)
    if target.is_dir() and any(target.iterdir()):
        if not overwrite:
            raise OutputExistsError(
                f"output directory {shown} already exists and is not empty; choose another --output, "
                "or pass --overwrite to replace a previous bundle"
            )
        reason = why_not_our_bundle(target)
        if reason is not None:
            raise OutputExistsError(
                f"--overwrite refused: output directory {shown} is not an albert-export bundle, or was changed since "
                f"it was written: {reason}; nothing was deleted (--overwrite replaces only an unchanged bundle), so "
                "move it away or choose another --output"
            )
    writable_ancestor(target, shown)
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
    """This process's umask (read by setting one and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class BundleWriter:
    """with BundleWriter(out) as bundle: write into bundle.path ...; bundle.commit(manifest) -> out."""

    def __init__(self, output_dir: str | Path, overwrite: bool = False):
        self.output = check_output_dir(output_dir, overwrite)
        self.target = self.output.resolve()
        self.overwrite = overwrite
        self.path: Path | None = None
        self.committed = False

    def sibling(self, kind: str) -> Path:
        """A new empty temporary folder beside the output, named after it, `kind` and this process's pid."""
        return Path(tempfile.mkdtemp(prefix=f".{self.target.name}.{kind}-{os.getpid()}-", dir=self.target.parent))

    def __enter__(self) -> "BundleWriter":
        try:
            self.target.parent.mkdir(parents=True, exist_ok=True)
            sweep_stale_siblings(self.target.parent)
            self.path = self.sibling("partial")
            (self.path / MARKER).write_text(marker_text(os.getpid()), encoding="utf-8")
        except OSError as exc:
            self.__exit__()
            raise OutputExistsError(f"cannot write the bundle {self.output}: {exc.strerror}; choose another "
                                    "--output") from None
        return self

    def __exit__(self, *exc_info) -> None:
        if not self.committed and self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)  # made by mkdtemp for this export: all ours

    def commit(self, manifest: Manifest, repository=None) -> Path:
        """Checksum and size every file, write manifest.json, rename the directory into place. repository (an
        albert_export.triton.RepositoryWriter): written from the complete bundle before the rename, renamed into
        place right after it; if that fails, the bundle's rename is undone (both or neither)."""
        files = [file for file in sorted(self.path.iterdir()) if file.name not in (MANIFEST, MARKER)]
        manifest.files = {file.name: sha256_file(file) for file in files}
        manifest.sizes = {file.name: file.stat().st_size for file in files}  # the reader checks them before hashing
        (self.path / MANIFEST).write_text(manifest.to_json())
        (self.path / MARKER).unlink()  # from here the manifest proves the directory is ours
        os.chmod(self.path, 0o777 & ~current_umask())  # mkdtemp creates 0700; a bundle gets mkdir's mode
        if repository is not None:
            repository.prepare(self.path)
        check_output_dir(self.output, self.overwrite)  # the world may have changed while we exported
        if self.target.is_dir() and any(self.target.iterdir()):
            self.replace_previous_bundle(repository)
        else:
            with signals_deferred():
                if self.target.is_dir():
                    self.target.rmdir()
                os.replace(self.path, self.target)
                if repository is not None:
                    try:
                        repository.commit()
                    except BaseException:
                        os.replace(self.target, self.path)  # back to the temporary sibling, which __exit__ removes
                        raise
        self.committed = True
        return self.output

    def replace_previous_bundle(self, repository=None) -> None:
        """Swap the finished bundle (and `repository`, if any) in for the bundle at the output, then delete the old one;
        on a failure the old one is put back."""
        old = self.sibling("old")
        with signals_deferred():  # between the renames no bundle is at the output: no Ctrl-C there, nor later
            os.replace(self.target, old)  # onto the empty directory mkdtemp made
            try:
                os.replace(self.path, self.target)
                if repository is not None:
                    try:
                        repository.commit()
                    except BaseException:
                        os.replace(self.target, self.path)
                        raise
            except BaseException:
                os.replace(old, self.target)
                raise
            remove_bundle(old)  # (a signal waits for this too, so no .NAME.old-* is left behind)


@contextlib.contextmanager
def signals_deferred():
    """SIGINT, SIGTERM and SIGHUP wait until the block is done, then reach the handlers they would have reached.
    (Handlers, not a signal mask: a process-directed signal goes to any thread that does not block it, and
    Python runs its handlers in the main thread whichever thread got it.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    stop = [getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)]
    previous = {signum: signal.signal(signum, lambda signum, frame: pending.append(signum)) for signum in stop}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        if pending:
            signal.raise_signal(pending[0])
