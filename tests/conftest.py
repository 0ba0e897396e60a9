from pathlib import Path

import pytest

# the team's shared test data (read-only), next to the repository
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def handmade_bundle(tmp_path_factory):
    """handmade_bundle(task, **albert_config) -> Path of a complete bundle (tiny random HF model exported with
    torch.onnx.export, opset 17, ../shared/DESIGN.md's I/O names, real sha256 sums); cached per task and config.
    Treat it as read-only: copy it (shutil.copytree) before damaging it."""
    from tests.handmade import make_bundle

    made: dict = {}

    def make(task: str, **config):
        key = (task, tuple(sorted(config.items())))
        if key not in made:
            made[key] = make_bundle(tmp_path_factory.mktemp("bundle") / task, task, **config)
        return made[key]

    return make


@pytest.fixture(scope="session")
def shared_checkpoint(tmp_path_factory):
    """shared_checkpoint(task, **albert_config) -> (directory, the transformers model): a random-weight checkpoint
    (tests.export_helpers.save_checkpoint), built once per session for every module that asks for the same one.
    Read-only: exports read it; copy it before damaging it."""
    from tests.export_helpers import save_checkpoint

    made: dict = {}

    def make(task: str, **config):
        key = (task, tuple(sorted(config.items())))
        if key not in made:
            directory = tmp_path_factory.mktemp("checkpoint") / task
            made[key] = directory, save_checkpoint(directory, task, **config)
        return made[key]

    return make
