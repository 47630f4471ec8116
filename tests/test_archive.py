"""A dataset uploaded as a .zip: unpacked under the datasets folder and checked; unsafe or
oversized archives refused with a sentence naming the upload, and nothing left behind."""

from __future__ import annotations

import stat
from pathlib import Path
import zipfile

import pytest

from hico.archive import MARKER, ArchiveLimits, dataset_owner, import_dataset, training_path
from hico.files import byte_size
from hico.data.dataset import find_clips
from hico.errors import HiCoError

from tests.conftest import write_class_dataset


def zip_folder(folder, archive, prefix="", extra=()):
    """Zip every file under folder (names under `prefix`), plus (name, bytes) extras."""
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, prefix + path.relative_to(folder).as_posix())
        for name, data in extra:
            zf.writestr(name, data)
    return archive


def left_in(datasets):
    return sorted(p.name for p in datasets.iterdir()) if datasets.exists() else []


def test_a_zipped_folder_of_class_folders_becomes_a_dataset(tmp_path):
    data = write_class_dataset(tmp_path / "data", per_class=2, frames=4)
    archive = zip_folder(data, tmp_path / "upload.zip", prefix="my scans/",
                         extra=[("my scans/bright/broken.mp4", b"not a video at all"),
                                ("__MACOSX/my scans/._bright", b"resource fork"),
                                ("my scans/.DS_Store", b"finder"),
                                ("my scans/notes/protocol.txt", b"x" * 3000),
                                ("my scans/dark/scores.xlsx", b"y" * 1000)])
    datasets = tmp_path / "datasets"
    result = import_dataset(archive, datasets, name="", shown_name="lungs.zip", owner="alice")
    assert result.name == "lungs" and result.folder == datasets / "lungs" == result.dataset
    assert (result.clips, result.per_class, result.unlabelled) == (4, {"bright": 2, "dark": 2}, 0)
    assert [path for path, _ in result.unreadable] == ["bright/broken.mp4"]
    # only what training reads is kept: the clips (and the marker); no unreadable clip, no notes
    kept = sorted(p.relative_to(result.folder).as_posix() for p in result.folder.rglob("*") if p.is_file())
    assert kept == [MARKER, *sorted(c.relative_to(data).as_posix() for c in data.rglob("*.mp4"))]
    assert result.left_out == (2, 3000 + 1000)
    assert training_path(result.folder) == result.folder and dataset_owner(result.folder) == "alice"
    message = result.message()
    assert message.startswith("Dataset lungs: 4 clips in 2 classes (bright 2, dark 2). 1 file(s) could not be read "
                              "and were left out: bright/broken.mp4 (")
    assert message.endswith(" 2 file(s) that are not clips (3.9 KiB) were not kept.")
    assert str(tmp_path) not in message
    assert left_in(datasets) == ["lungs"]  # no temporary sibling left


def test_a_manifest_archive_trains_on_its_csv_without_the_unreadable_rows(tmp_path):
    data = write_class_dataset(tmp_path / "data", per_class=2, frames=4)
    rows = "path,label\n" + "".join(f"{p.relative_to(data).as_posix()},{p.parent.name}\n"
                                    for p in sorted(data.rglob("*.mp4")))
    archive = zip_folder(data, tmp_path / "m.zip", extra=[("list.csv", rows + "bad.dcm,dark\n"),
                                                         ("bad.dcm", b"DICM" * 40)])
    result = import_dataset(archive, tmp_path / "datasets", name="cardiac_v2")
    assert result.dataset == result.folder / "list.csv"
    assert [path for path, _ in result.unreadable] == ["bad.dcm"]
    assert "bad.dcm" not in result.dataset.read_text()
    assert training_path(result.folder) == result.dataset
    found = find_clips(result.dataset)
    assert len(found.clips) == 4 and found.classes == ["bright", "dark"]


def _member(name, data=b"x", mode=stat.S_IFREG | 0o644):
    info = zipfile.ZipInfo(name)
    info.external_attr = mode << 16
    return info, data


@pytest.mark.parametrize("members, limits, expected", [
    ([_member("../evil.mp4")], ArchiveLimits(), "outside its own folder (../evil.mp4)"),
    ([_member("/etc/evil.mp4")], ArchiveLimits(), "outside its own folder"),
    ([_member("C:/evil.mp4")], ArchiveLimits(), "outside its own folder"),
    ([_member("a/link.mp4", b"/etc/passwd", stat.S_IFLNK | 0o777)], ArchiveLimits(), "a link or a device"),
    ([_member("a/zeros.mp4", bytes(20 << 20))], ArchiveLimits(), "looks like a zip bomb"),
    ([_member(f"a/{i}.mp4") for i in range(5)], ArchiveLimits(max_members=4), "holds 5 entries, more than the 4"),
    ([_member("a/big.mp4", bytes(3000))], ArchiveLimits(max_bytes=2000), "unpacks to 2.9 KiB, more than the 2.0 KiB allowed"),
    ([_member("a/")], ArchiveLimits(), "holds no files"),
    ([_member("a/notes.txt", b"hello")], ArchiveLimits(), "holds no clips"),
    ([_member("a/x"), _member("a/x/y.mp4")], ArchiveLimits(), "lists a/x/y.mp4 twice"),
    ([_member("a/x.mp4", b"junk"), _member("a/y.png", b"junk")], ArchiveLimits(), "holds no clip that can be read"),
])
def test_unsafe_or_oversized_archives_are_refused_and_leave_nothing(tmp_path, members, limits, expected):
    archive = tmp_path / "up.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for info, data in members:
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    datasets = tmp_path / "datasets"
    with pytest.raises(HiCoError, match="Archive scans.zip") as err:
        import_dataset(archive, datasets, shown_name="scans.zip", limits=limits)
    assert expected in str(err.value)
    assert str(tmp_path) not in str(err.value)
    assert left_in(datasets) == []


def test_many_small_members_count_against_one_budget(tmp_path):
    """Issue 19: members of 1 MiB or less skipped the ratio check, so a 1.18 MB zip of 1,024 such
    members unpacked to 1 GiB. The whole archive is now held to the ratio too."""
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(200):
            zf.writestr(f"a/{i}.mp4", bytes(1 << 20))
    size = archive.stat().st_size
    assert size < 300_000  # 200 MiB of members in a small file
    with pytest.raises(HiCoError) as err:
        import_dataset(archive, tmp_path / "datasets", shown_name="bomb.zip")
    assert str(err.value) == (f"Archive bomb.zip unpacks to 200 MiB, more than 100 times its own size allows "
                              f"({byte_size(100 * size + (1 << 20))}); it looks like a zip bomb and was refused.")
    assert left_in(tmp_path / "datasets") == []


def test_a_manifest_cannot_probe_the_server_for_files(tmp_path):
    """Whether a listed path outside the archive exists must not change the answer."""
    data = write_class_dataset(tmp_path / "data", per_class=1, frames=4)
    answers = []
    for outside in ("/etc/hostname", "/no/such/file.mp4"):
        rows = f"path,label\nbright/{next((data / 'bright').iterdir()).name},bright\n{outside},dark\n"
        archive = zip_folder(data, tmp_path / "probe.zip", extra=[("list.csv", rows)])
        with pytest.raises(HiCoError) as err:
            import_dataset(archive, tmp_path / "datasets", shown_name="probe.zip")
        answers.append(str(err.value).replace(Path(outside).name, "NAME"))
    assert answers[0] == answers[1] == "Archive probe.zip: its manifest lists a clip outside the archive (NAME)."


def test_names_empty_files_and_non_archives_get_one_sentence(tmp_path):
    data = write_class_dataset(tmp_path / "data", per_class=2, frames=4)
    archive = zip_folder(data, tmp_path / "good.zip")
    datasets = tmp_path / "datasets"
    import_dataset(archive, datasets, name="first")
    with pytest.raises(HiCoError, match="A dataset called first exists already"):
        import_dataset(archive, datasets, name="first")
    with pytest.raises(HiCoError, match="Dataset name '../x' is not allowed"):
        import_dataset(archive, datasets, name="../x")
    empty = tmp_path / "empty.zip"
    empty.write_bytes(b"")
    with pytest.raises(HiCoError, match="^File my.zip is empty.$"):
        import_dataset(empty, datasets, shown_name="my.zip")
    text = tmp_path / "notes.zip"
    text.write_text("hello")
    with pytest.raises(HiCoError, match="^File notes.zip is not a .zip archive.$"):
        import_dataset(text, datasets)
    assert left_in(datasets) == ["first"]


def test_byte_sizes_read_as_people_write_them():
    assert [byte_size(n) for n in (0, 812, 3000, 12 * 2**20, 1.5 * 2**30, 64 * 2**30)] == \
        ["0 bytes", "812 bytes", "2.9 KiB", "12 MiB", "1.5 GiB", "64 GiB"]
