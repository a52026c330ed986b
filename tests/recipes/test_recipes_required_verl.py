"""Every recipe folder states the verl release it needs in ``REQUIRED_VERL.txt`` (verl-recipe's convention),
and that release is the one the plugin accepts (``am3_verl.compat.VERL_VERSION``)."""

import pytest

from am3_verl import compat
from recipe_overrides import RECIPES

RECIPE_FOLDERS = sorted(p for p in RECIPES.iterdir() if p.is_dir())


def test_there_are_recipe_folders():
    assert {p.name for p in RECIPE_FOLDERS} >= {"grpo", "sft", "agent_loops"}


@pytest.mark.parametrize("folder", RECIPE_FOLDERS, ids=lambda p: p.name)
def test_a_recipe_folder_names_the_verl_the_plugin_accepts(folder):
    required = compat.read_required_verl(folder / compat.REQUIRED_VERL_FILE)
    assert required["VERSION"] == compat.VERL_VERSION
    assert required["MODE"] == "release" and required["UPSTREAM"].startswith("https://github.com/")
    assert f"=={compat.VERL_VERSION}" in required["PIP_INSTALL"]


def test_a_malformed_required_verl_file_names_its_line(tmp_path):
    path = tmp_path / compat.REQUIRED_VERL_FILE
    path.write_text("# comment\nVERSION=0.9.1\nVERSION=0.9.2\n")
    with pytest.raises(ValueError, match="line 3"):
        compat.read_required_verl(path)
    path.write_text("VERSION 0.9.1\n")
    with pytest.raises(ValueError, match="line 1"):
        compat.read_required_verl(path)


def test_the_version_gate_points_at_the_files(monkeypatch):
    monkeypatch.setattr(compat, "installed_verl_version", lambda: "0.9.2")
    with pytest.raises(compat.UnsupportedVerlVersion, match="REQUIRED_VERL.txt"):
        compat.check_verl_version()
