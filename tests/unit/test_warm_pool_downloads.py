"""The downloads store: name sanitizing, and collecting a session's files from a browser's tree
that its (hostile) uid may have filled with links, FIFOs, hard links and oversized files."""
import os
import uuid
from pathlib import Path

import pytest

from services.warm_pool.adapters import downloads as store
from services.warm_pool.adapters.downloads import MAX_NAME_BYTES, sanitize_name


@pytest.mark.parametrize("raw, expected", [
    ("report.pdf", "report.pdf"),
    ("..", "download"),
    (".", "download"),
    ("", "download"),
    (".bashrc", "bashrc"),
    ("../../etc/passwd", "_.._etc_passwd"),
    ("a/b\\c.txt", "a_b_c.txt"),
    ("nul\0byte.txt", "nul_byte.txt"),
    ("line\nbreak", "line_break"),
    ("evil\u202egpj.exe", "evil_gpj.exe"),  # a right-to-left override would disguise the extension
    ("  spaced  ", "spaced"),
    ("caf\u00e9.txt", "café.txt"),
])
def test_names_become_plain_file_names(raw, expected):
    assert sanitize_name(raw, set()) == expected


def test_undecodable_bytes_and_long_names():
    raw = os.fsdecode(b"\xff\xfe-name.bin")
    assert sanitize_name(raw, set()) == "\ufffd\ufffd-name.bin"
    long = sanitize_name("é" * 300 + ".tar.gz", set())
    assert len(long.encode()) <= MAX_NAME_BYTES and long.endswith(".gz")
    assert store.plain(long)


def test_names_are_unique_in_a_session():
    taken = {"a.txt", "a (1).txt"}
    assert sanitize_name("a.txt", taken) == "a (2).txt"
    assert sanitize_name("download", {"download"}) == "download (1)"
    long = "x" * 250 + ".txt"
    first = sanitize_name(long, set())
    second = sanitize_name(long, {first})
    assert second != first and second.endswith(" (1).txt") and len(second.encode()) <= MAX_NAME_BYTES


@pytest.fixture
def tree(tmp_path):
    home, session = tmp_path / "home", str(uuid.uuid4())
    (home / "downloads" / session).mkdir(parents=True)
    return home, home / "downloads" / session, tmp_path / "store", session


def _collect(home, session, root, budget=10_000, taken=None):
    return store.collect(home, session, store=root, tenant="t", taken=set() if taken is None else taken,
                         budget=budget)


def test_regular_files_are_moved_into_the_store(tree):
    home, src, root, session = tree
    (src / "one.txt").write_bytes(b"1" * 10)
    (src / "two.bin").write_bytes(b"\0\xff" * 5)
    got = _collect(home, session, root)
    assert [(c.name, c.size_bytes, c.dropped) for c in got] == [("one.txt", 10, None), ("two.bin", 10, None)]
    assert (root / "t" / session / "two.bin").read_bytes() == b"\0\xff" * 5
    assert not list(src.iterdir())  # moved, not copied
    assert store.read_chunk(root, "t", session, "one.txt", offset=3, length=4) == (b"1111", 10)
    assert store.read_chunk(root, "t", session, "../t", offset=0, length=4) is None


def test_links_fifos_hard_links_and_directories_are_left_alone(tree, tmp_path):
    home, src, root, session = tree
    secret = tmp_path / "host-secret"
    secret.write_text("host file")
    os.symlink(secret, src / "link.txt")
    os.mkfifo(src / "fifo")
    os.link(secret, src / "hard.txt")  # one inode, two links: not the browser's own file
    (src / "sub").mkdir()
    (src / "sub" / "inner.txt").write_text("x")
    other = src / "other-owner.txt"
    other.write_text("planted")
    os.chown(other, 12345, 12345)
    assert _collect(home, session, root) == []
    assert not (root / "t" / session).exists()
    assert secret.read_text() == "host file"


def test_a_linked_downloads_or_session_directory_is_not_followed(tree, tmp_path):
    home, src, root, session = tree
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "loot.txt").write_text("host file")
    os.rename(src, tmp_path / "gone")
    os.symlink(outside, src)  # the session's directory is a link
    assert _collect(home, session, root) == [] and store.sessions_with_files(home) == []
    os.unlink(src)
    os.rename(home / "downloads", tmp_path / "gone2")
    (outside / session).mkdir()
    (outside / session / "loot.txt").write_text("host file")
    os.symlink(outside, home / "downloads")  # downloads itself is a link
    assert _collect(home, session, root) == [] and store.sessions_with_files(home) == []
    assert (outside / session / "loot.txt").exists()


def test_files_over_the_budget_are_dropped_and_recorded(tree):
    home, src, root, session = tree
    (src / "a.bin").write_bytes(b"a" * 600)
    (src / "b.bin").write_bytes(b"b" * 600)
    (src / "c.bin").write_bytes(b"c" * 300)
    (src / "d.crdownload").write_bytes(b"d")
    got = {c.name: (c.size_bytes, c.dropped) for c in _collect(home, session, root, budget=1000)}
    assert got == {"a.bin": (600, None), "b.bin": (600, "over_cap"), "c.bin": (300, None),
                   "d.crdownload": (1, "incomplete")}
    assert sorted(p.name for p in (root / "t" / session).iterdir()) == ["a.bin", "c.bin"]


def test_a_later_collection_keeps_names_unique(tree):
    home, src, root, session = tree
    (src / "same.txt").write_text("first")
    assert [c.name for c in _collect(home, session, root)] == ["same.txt"]
    (src / "same.txt").write_text("second")
    assert [c.name for c in _collect(home, session, root, taken={"same.txt"})] == ["same (1).txt"]
    assert (root / "t" / session / "same (1).txt").read_text() == "second"


def test_remove_and_orphan_listing(tree):
    home, src, root, session = tree
    (src / "x").write_text("x")
    _collect(home, session, root)
    assert [(t, s) for t, s, _ in store.session_dirs(root)] == [("t", session)]
    store.remove(root, "t", session, "x")
    assert not (root / "t").exists()
    assert store.read_chunk(Path(root), "t", session, "x", offset=0, length=1) is None
