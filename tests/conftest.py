"""Shared fixtures: the repository root on sys.path, the default params, small generated data."""
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
RADAR_DIR = os.path.join(SHARED, "data", "radar")
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import config  # noqa: E402
import generate_data  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """The tests' networks are tiny: one thread each is faster, and `make test` runs one pytest
    worker per core (pytest-xdist), so more threads would only compete for the cores."""
    import torch
    torch.set_num_threads(1)


@pytest.fixture
def params():
    """The repository's params.json, validated, as a fresh dict."""
    return config.load_params(os.path.join(ROOT, "params.json"))


@pytest.fixture
def params_file(tmp_path):
    """Write a params dict to a temporary params.json and return its path."""
    def write(params):
        path = tmp_path / "params.json"
        path.write_text(json.dumps(params))
        return str(path)
    return write


@pytest.fixture(scope="session")
def asi_days(tmp_path_factory):
    """Ten generated ASI days on a 112 x 76 grid (1/32 of n3125), 20240405 and 20240406 absent.

    Returns the dict of generate_data.write_asi_days with "dir" added; truth included.
    """
    folder = tmp_path_factory.mktemp("asi")
    result = generate_data.write_asi_days(str(folder), 20240401, 20240410, shape=(112, 76), seed=3,
                                          absent=[20240405, 20240406], return_truth=True)
    result["dir"] = str(folder)
    return result


@pytest.fixture(scope="session")
def raw_cases(tmp_path_factory):
    """Four generated raw nowcasting cases, 48 x 40 pixels, 40 steps of 5 minutes."""
    folder = tmp_path_factory.mktemp("raw")
    summary = generate_data.write_raw_cases(str(folder), n_cases=4, shape=(48, 40), n_steps=40, seed=5)
    return {"dir": str(folder), "cases": summary}


def tiny_params(tmp, **training_overrides):
    """params for a tiny, fast nowcasting run under the folder `tmp` (a pathlib.Path)."""
    params = config.load_params(os.path.join(ROOT, "params.json"))
    params["paths"].update(processed_data=str(tmp / "processed"), checkpoints=str(tmp / "ckpt"),
                           outputs=str(tmp / "out"))
    params["data"].update(patch_size=16, lead_steps=2, output_steps=2, input_steps=3)
    params["data"]["split"] = {"train": 0.5, "val": 0.25, "test": 0.25, "seed": 0}
    params["model"]["convlstm_unet"].update(base_channels=4, depth=2)
    params["training"].update(epochs=2, steps_per_epoch=3, val_steps=2, batch_size=2, num_workers=0, seed=3)
    params["training"].update(training_overrides)
    return params


def write_tiny_params(tmp, processed, **training_overrides):
    """Write tiny_params (reading the stores in `processed`) to tmp/params.json; return its path."""
    params = tiny_params(tmp, **training_overrides)
    params["paths"]["processed_data"] = processed
    path = tmp / "params.json"
    path.write_text(json.dumps(params))
    return str(path)


@pytest.fixture(scope="session")
def processed(raw_cases, tmp_path_factory):
    """preproc.py output (folder) of the four generated raw cases, with tiny_params."""
    import preproc
    tmp = tmp_path_factory.mktemp("proc")
    params = tiny_params(tmp)
    params["paths"]["raw_dataset"] = raw_cases["dir"]
    path = tmp / "params.json"
    path.write_text(json.dumps(params))
    assert preproc.main(["--config", str(path)]) == 0
    return str(tmp / "processed")


@pytest.fixture(scope="session")
def trained(processed, tmp_path_factory):
    """A one-epoch tiny model: {"config": params path, "checkpoint": best.pt, "dir": run folder}."""
    import training
    tmp = tmp_path_factory.mktemp("trained")
    cfg = write_tiny_params(tmp, processed, epochs=1)
    assert training.main(["--config", cfg, "--skip_test"]) == 0
    return {"config": cfg, "checkpoint": str(tmp / "ckpt" / "best.pt"), "dir": tmp}
