"""Walking folders: images found by name or content, loops and unreadable folders survived; the listing merged
with the store's rows as two sorted streams, whole or cut into folders as the Ray runner lists them."""

import os
import shutil

import pyarrow as pa
import pytest

from indexer.runners import manifest
from indexer.runners.work import stored_files
from indexer.scan import FileStat, StoredFile, changes, diff_against_store, walk_images
from indexer.store import INDEXED, Image, get_root, open_store, utcnow
from tests.support.photos import photo


def stored(known: dict[str, tuple[int, int, int, bool]]) -> list[StoredFile]:
    """The store's rows as the scan reads them: in relpath order."""
    return [StoredFile(i, relpath, *rest) for relpath, (i, *rest) in sorted(known.items())]


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
    result = diff_against_store(tmp_path, stored(known))
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
    result = diff_against_store(tmp_path, stored(known))
    assert result.unchanged == 1
    assert [s.relpath for s in result.new] == ["new.jpg"]
    assert sorted((i, s.relpath) for i, s in result.changed) == [(2, "changed.jpg"), (4, "was-denied.jpg")]
    assert result.deleted == [3]


def test_the_merge_orders_paths_by_their_bytes_as_the_store_does():
    """ "a.jpg" < "a/b.jpg" < "a0.jpg": a folder's files are not where a sort of path parts would put them."""
    files = [FileStat(p, 1, 1) for p in sorted(["a.jpg", "a/b.jpg", "a/é.jpg", "a0.jpg", "b.jpg"])]
    rows = [StoredFile(1, "a-gone.jpg", 1, 1, False), StoredFile(2, "a/b.jpg", 1, 1, False),
            StoredFile(3, "a/é.jpg", 2, 1, False), StoredFile(4, "hidden/x.jpg", 1, 1, False)]  # fmt: skip
    got = [(kind, stat.relpath if stat else None, i) for kind, stat, i in changes(files, rows, ("hidden/",))]
    assert got == [
        ("deleted", None, 1), ("new", "a.jpg", None), ("unchanged", "a/b.jpg", 2), ("changed", "a/é.jpg", 3),
        ("new", "a0.jpg", None), ("new", "b.jpg", None),
    ]  # fmt: skip
    with pytest.raises(RuntimeError, match="unsorted"):  # never a guess that would delete rows
        list(changes(files, list(reversed(rows))))


def test_a_tree_cut_into_folders_diffs_as_one_walk(tmp_path):
    """The driver's files against the rows outside the folders it hands out, each folder's files against its own
    range of rows: together, the whole walk against the whole store."""
    tree = tmp_path / "tree"
    for relpath in ["top.jpg", "a.jpg", "a/x.jpg", "a/b/y.png", "a0/z.jpg", "c/d/e/f.jpg", "c/d.jpg", "c/d/IMG_1.HEIC"]:
        (tree / relpath).parent.mkdir(parents=True, exist_ok=True)
        photo(len(relpath)).save(tree / relpath, format="PNG")
    (tree / "c" / "d" / "IMG_1.MOV").write_bytes(b"motion")
    (tree / "c" / "d" / "e" / "f.xmp").write_text("<x/>")
    os.symlink(tree, tree / "c" / "d" / "loop")  # back to the top: not walked again
    whole = sorted(f.relpath for f in walk_images(tree))
    store = open_store(tmp_path / "store", model="test", dim=4, create=True)
    with store.session() as s:
        root_id = get_root(s, tree).id
        st = (tree / "a" / "b" / "y.png").stat()
        known = {"a/x.jpg": (0, 0), "a/b/y.png": (st.st_size, st.st_mtime_ns), "gone.jpg": (1, 1), "c/gone.jpg": (1, 1),
                 "a-b.jpg": (1, 1)}  # fmt: skip
        rows = {rel: Image(root_id=root_id, relpath=rel, size=size, mtime_ns=mtime, status=INDEXED, indexed_at=utcnow())
                for rel, (size, mtime) in known.items()}  # fmt: skip
        s.add_all(rows.values())
        s.commit()
        ids = {rel: row.id for rel, row in rows.items()}

    plan = manifest.plan(tree, units=2)
    assert plan.folders and plan.files  # some listed by the driver, some left to tasks
    scan = manifest.StreamedScan(found=plan.found)
    ranges = [manifest.folder_range(tree, folder) for folder in plan.folders]
    gaps = (row for gap in manifest.outside(ranges) for row in stored_files(store, root_id, *gap))
    scan.parts = list(manifest.changed_parts(plan.files, gaps, (), 2, scan))
    for folder in plan.folders:
        *parts, folder_scan = manifest.walk_and_diff(tree, folder, plan.seen, str(tmp_path / "store"), root_id, 2, 3)
        assert all(len(part) >= 2 for part in parts[:-1]) and len(parts) <= 3
        folder_scan.parts = parts
        scan.add(folder_scan)
    todo = pa.concat_tables(scan.parts)
    assert sorted(todo.column("relpath").to_pylist()) == [rel for rel in whole if rel != "a/b/y.png"]
    todo_ids = dict(zip(todo.column("relpath").to_pylist(), todo.column("image_id").to_pylist(), strict=True))
    assert todo_ids["a/x.jpg"] == ids["a/x.jpg"] and todo_ids["top.jpg"] == -1
    assert (scan.todo, scan.unchanged, scan.found.count) == (len(whole) - 1, 1, len(whole))
    assert sorted(scan.deleted.tolist()) == sorted(ids[rel] for rel in ["gone.jpg", "c/gone.jpg", "a-b.jpg"])
    assert scan.found.motions == {"c/d/IMG_1.HEIC": "c/d/IMG_1.MOV"} and list(scan.found.sidecars) == ["c/d/e/f.xmp"]


def test_a_folder_with_much_work_makes_parts_for_the_object_store():
    """Ray keeps results under 100 KB in the driver's memory: 10M small parts would fill it."""
    few = [FileStat("IMG_0001.jpg", 1, 1)] * 30
    many = [FileStat(f"folder/IMG_{n:07d}.jpg", 1, 1) for n in range(10_000)]
    assert manifest.part_size(few, 16, 39) == 16  # small work stays in small parts: a decode task each
    rows = manifest.part_size(many, 16, 39)
    assert rows * (24 + len(many[0].relpath)) >= manifest.OBJECT_STORE_BYTES > 260 * (24 + len(many[0].relpath))
