"""Checkpoints resume_mode=auto can trust: the manifest marks a complete folder, the resolver never picks a partial one.

Each state below is one a killed driver leaves behind with verl 0.9.1 (which rewrites its tracker in
place after the save, and with max_actor_ckpt_to_keep removes the previous actor files before that);
tests/ppo/test_ppo_judge_outage.py kills a real main_ppo while it saves.
"""

import pytest

from am3_verl.training.checkpoints import (
    MANIFEST,
    TRACKER,
    CompleteCheckpointMarker,
    IncompleteCheckpoint,
    incompleteness,
    is_saved,
    resolve_resume_checkpoint,
)


def saved(root, step, marked=True):
    """A step folder as verl writes it (actor shard + data.pt), marked complete by the callback when ``marked``."""
    folder = root / f"global_step_{step}"
    (folder / "actor").mkdir(parents=True)
    (folder / "actor" / "model_world_size_1_rank_0.pt").write_bytes(b"w" * (100 + step))
    (folder / "data.pt").write_bytes(b"d" * 10)
    (root / TRACKER).write_text(str(step))  # verl's own write
    if marked:
        CompleteCheckpointMarker().on_save(trainer=None, global_step=step, checkpoint_dir=str(folder))
    return folder


def test_the_callback_marks_the_folder_and_points_the_tracker_at_it(tmp_path):
    folder = saved(tmp_path, 3)
    assert (folder / MANIFEST).is_file() and incompleteness(folder) is None
    assert (tmp_path / TRACKER).read_text() == "3"
    assert not list(tmp_path.rglob("*.partial"))
    assert resolve_resume_checkpoint(tmp_path) == folder


def test_a_save_killed_before_its_marker_resumes_from_the_previous_complete_one(tmp_path):
    saved(tmp_path, 1)
    assert is_saved(tmp_path, 1) and not is_saved(tmp_path, 2)
    saved(tmp_path, 2, marked=False)  # verl wrote the tracker, the driver died before the callback
    assert not is_saved(tmp_path, 2)
    assert resolve_resume_checkpoint(tmp_path) == tmp_path / "global_step_1"
    assert (tmp_path / TRACKER).read_text() == "1"


def test_an_empty_tracker_from_a_kill_mid_write(tmp_path):
    saved(tmp_path, 1)
    saved(tmp_path, 2)
    (tmp_path / TRACKER).write_text("")
    assert resolve_resume_checkpoint(tmp_path) == tmp_path / "global_step_2"


def test_a_folder_whose_files_changed_after_marking_is_not_complete(tmp_path):
    saved(tmp_path, 1)
    folder = saved(tmp_path, 2)
    # max_actor_ckpt_to_keep: verl removes the previous actor files before it moves the tracker
    (folder / "actor" / "model_world_size_1_rank_0.pt").unlink()
    assert "missing" in incompleteness(folder)
    assert resolve_resume_checkpoint(tmp_path) == tmp_path / "global_step_1"
    (tmp_path / "global_step_1" / "data.pt").write_bytes(b"truncated")
    with pytest.raises(IncompleteCheckpoint, match=r"global_step_1: data.pt has 9 bytes, 10 when saved"):
        resolve_resume_checkpoint(tmp_path)


def test_no_tracker_is_a_fresh_start_as_in_verl(tmp_path):
    saved(tmp_path, 1, marked=False)
    (tmp_path / TRACKER).unlink()
    assert resolve_resume_checkpoint(tmp_path) is None
    assert resolve_resume_checkpoint(tmp_path / "absent") is None


def test_a_tracker_with_nothing_complete_is_an_error_naming_the_way_out(tmp_path):
    saved(tmp_path, 1, marked=False)
    with pytest.raises(IncompleteCheckpoint, match="resume_mode=disable"):
        resolve_resume_checkpoint(tmp_path)


def test_an_asynchronous_save_is_left_unmarked(tmp_path):
    folder = tmp_path / "global_step_1"
    folder.mkdir()
    CompleteCheckpointMarker().on_save(trainer=None, global_step=1, checkpoint_dir=str(folder), async_save=True)
    assert not (folder / MANIFEST).exists()
