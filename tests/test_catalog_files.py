"""catalog.files: a staged write appears whole or not at all, and the partials of writers
that died are cleaned up while living writers' are kept."""
import os
import subprocess
import sys

import pytest

from catalog.files import PARTIAL, partial_path, remove_abandoned_partials, staged, writer_tag


def test_a_file_is_written_beside_and_renamed_on_success(tmp_path):
    target = tmp_path / "hashes.json"
    target.write_text("old")
    with staged(target) as tmp:
        assert tmp == tmp_path / f"hashes.json{PARTIAL}{writer_tag()}"
        tmp.write_text("new")
        assert target.read_text() == "old"  # readers see the old file until the rename
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["hashes.json"]


def test_a_folder_is_made_staged_and_renamed(tmp_path):
    target = tmp_path / "cache" / "unet-abc"
    target.parent.mkdir()
    with staged(target, directory=True) as tmp:
        assert tmp.is_dir() and not target.exists()
        (tmp / "weights.index.json").write_text("{}")
    assert (target / "weights.index.json").read_text() == "{}"
    assert [p.name for p in target.parent.iterdir()] == ["unet-abc"]


@pytest.mark.parametrize("directory", [False, True])
def test_an_exception_leaves_no_partial_and_the_target_untouched(tmp_path, directory):
    target = tmp_path / "model"
    with pytest.raises(OSError, match="No space"):
        with staged(target, directory=directory) as tmp:
            if directory:
                (tmp / "shard-0000.safetensors").write_bytes(b"x" * 100)
            else:
                tmp.write_bytes(b"x" * 100)
            raise OSError(28, "No space left on device")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(KeyboardInterrupt):  # a stopped server cleans up too
        with staged(target) as tmp:
            tmp.write_text("half")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_a_folder_another_process_finished_first_is_kept(tmp_path):
    target = tmp_path / "converted"
    target.mkdir()
    (target / "model_index.json").write_text("theirs")
    with staged(target) as tmp:
        tmp.mkdir()
        (tmp / "model_index.json").write_text("ours")
    assert (target / "model_index.json").read_text() == "theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["converted"]


def test_a_partial_this_process_left_earlier_is_replaced(tmp_path):
    target = tmp_path / "unet"
    leftover = partial_path(target)
    leftover.mkdir()
    (leftover / "stale").write_text("cut off")
    with staged(target, directory=True) as tmp:
        assert list(tmp.iterdir()) == []
    assert list(target.iterdir()) == []


def ended_pid() -> int:
    """The pid of a real process that has ended (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_abandoned_partials_are_removed_and_living_writers_kept(tmp_path):
    dead_folder = tmp_path / f"UNet2DConditionModel-abc{PARTIAL}{ended_pid()}"
    dead_folder.mkdir()
    (dead_folder / "shard-0000.safetensors").write_bytes(b"half")
    dead_file = tmp_path / f"v1.safetensors{PARTIAL}{ended_pid()}"
    dead_file.write_bytes(b"half")
    mine = tmp_path / f"UNet2DConditionModel-abc{PARTIAL}{os.getpid()}"
    mine.mkdir()
    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        living = tmp_path / f"CLIPTextModel-def{PARTIAL}{writer.pid}"
        living.mkdir()
        finished = tmp_path / "UNet2DConditionModel-abc"
        finished.mkdir()
        removed = remove_abandoned_partials(tmp_path)
    finally:
        writer.kill()
        writer.wait()
    assert sorted(removed) == sorted([dead_folder, dead_file])
    assert not dead_folder.exists() and not dead_file.exists()
    assert mine.exists() and living.exists() and finished.exists()


def test_another_hosts_partial_is_left_alone(tmp_path):
    """Containers sharing a volume often run their writers under the same pid: a partial
    of another host is never taken for an abandoned one of ours (and ours name the host)."""
    dead = ended_pid()
    theirs = tmp_path / f"model-1a2b{PARTIAL}other-box-{dead}"
    ours = tmp_path / f"model-3c4d{PARTIAL}{writer_tag(dead)}"
    theirs.mkdir()
    ours.mkdir()
    assert remove_abandoned_partials(tmp_path) == [ours]
    assert theirs.exists()


def test_only_partials_of_the_named_targets_are_looked_at(tmp_path):
    dead = ended_pid()
    ours = tmp_path / f"model-1a2b{PARTIAL}{dead}"
    other = tmp_path / f"other-3c4d{PARTIAL}{dead}"
    ours.mkdir()
    other.mkdir()
    assert remove_abandoned_partials(tmp_path, "model-*") == [ours]
    assert not ours.exists() and other.exists()
