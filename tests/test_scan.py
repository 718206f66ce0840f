"""Walking folders: images found by name or content, loops and unreadable folders survived."""

import os
import shutil

from indexer.scan import diff_against_store, walk_images
from tests.support.photos import photo


def test_finds_images_by_extension_and_by_content(tmp_path):
    (tmp_path / "nested" / "deeper").mkdir(parents=True)
    photo(1).save(tmp_path / "a.jpg")
    photo(2).save(tmp_path / "nested" / "deeper" / "b.PNG")
    photo(3).save(tmp_path / "no_extension", format="JPEG")
    photo(4).save(tmp_path / "odd.dat", format="PNG")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "random.bin").write_bytes(os.urandom(64))
    (tmp_path / "fake.jpg").write_text("text with a .jpg name is a candidate: decoding rejects it")
    (tmp_path / ".hidden").mkdir()
    photo(5).save(tmp_path / ".hidden" / "c.jpg")
    found = sorted(f.relpath for f in walk_images(tmp_path))
    assert found == ["a.jpg", "fake.jpg", "nested/deeper/b.PNG", "no_extension", "odd.dat"]


def test_symlink_loops_do_not_hang(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    photo(1).save(tmp_path / "a" / "b" / "x.jpg")
    os.symlink(tmp_path / "a", tmp_path / "a" / "b" / "loop")
    os.symlink(tmp_path / "missing", tmp_path / "dangling.jpg")
    assert [f.relpath for f in walk_images(tmp_path)] == ["a/b/x.jpg"]


def test_unreadable_folder_is_reported_and_its_files_are_not_deleted(tmp_path, monkeypatch):
    (tmp_path / "open").mkdir()
    (tmp_path / "locked").mkdir()
    photo(1).save(tmp_path / "open" / "x.jpg")
    photo(2).save(tmp_path / "locked" / "y.jpg")
    real_scandir = os.scandir

    def scandir(path):  # root ignores permissions, so simulate the OS refusing to list one folder
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    known = {"locked/y.jpg": (7, 1, 1, False), "gone.jpg": (8, 1, 1, False)}
    result = diff_against_store(tmp_path, known)
    assert [s.relpath for s in result.new] == ["open/x.jpg"]
    assert result.unreadable_dirs == [str(tmp_path / "locked")]
    assert result.deleted == [8]  # y.jpg may still exist: it is kept


def test_diff_uses_stats(tmp_path):
    photo(1).save(tmp_path / "same.jpg")
    photo(2).save(tmp_path / "changed.jpg")
    photo(3).save(tmp_path / "was-denied.jpg")
    st_same, st_changed = (tmp_path / "same.jpg").stat(), (tmp_path / "changed.jpg").stat()
    st_denied = (tmp_path / "was-denied.jpg").stat()
    known = {
        "same.jpg": (1, st_same.st_size, st_same.st_mtime_ns, False),
        "changed.jpg": (2, st_changed.st_size, st_changed.st_mtime_ns - 1, False),
        "deleted.jpg": (3, 10, 10, False),
        # skipped for a reason that can heal (a chmod keeps size and mtime): retried though unchanged
        "was-denied.jpg": (4, st_denied.st_size, st_denied.st_mtime_ns, True),
    }
    shutil.copy(tmp_path / "same.jpg", tmp_path / "new.jpg")
    result = diff_against_store(tmp_path, known)
    assert result.unchanged == 1
    assert [s.relpath for s in result.new] == ["new.jpg"]
    assert sorted((i, s.relpath) for i, s in result.changed) == [(2, "changed.jpg"), (4, "was-denied.jpg")]
    assert result.deleted == [3]
