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
