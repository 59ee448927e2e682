"""A tenant's attacks on the profile packer (red team, issue 18).

The user-data directory is the tenant's: the browser's uid owns its whole home (`<base>/home` is
its tmpfs, mode 0700, its uid's) and a renderer escapee (SECURITY.md's threat model) may have
rearranged anything in it. warm_pool packs it as root on the host, where a link resolves against
the host's filesystem, and the archive comes back to the tenant in its next session. So every
entry must be reached without following a link, opened without blocking, and read within a cap.
"""
import io
import os
import tarfile
import threading
from pathlib import Path

import pytest

from services.warm_pool import profile_archive as pa

SECRET = b"host-secret-7f3a: root:$6$not-the-tenants$"


def _members(archive: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}


@pytest.fixture
def host_dir(tmp_path) -> Path:
    """Stands for a host directory (/etc, another tenant's tree) only root may read."""
    d = tmp_path / "host"
    d.mkdir(mode=0o700)
    (d / "shadow").write_bytes(SECRET)
    return d


def test_a_profile_directory_replaced_by_a_link_to_a_host_directory_packs_nothing_of_it(tmp_path, host_dir):
    home = tmp_path / "home"
    home.mkdir()
    (home / "profile").symlink_to(host_dir)  # mv profile x; ln -s /etc profile
    try:
        archive = pa.pack(home / "profile", max_bytes=10**7)
    except pa.ArchiveError:
        return  # refused outright: fine too
    assert all(SECRET not in data for data in _members(archive).values())


def test_a_folder_swapped_for_a_link_while_packing_carries_no_host_file(tmp_path, host_dir, monkeypatch):
    """The race a live tenant process wins: after the packer listed `z/shadow` (a file of its
    own), `z` becomes a link to a host directory holding a `shadow`. Made deterministic: the swap
    happens when the packer opens the first file."""
    profile = tmp_path / "profile"
    (profile / "z").mkdir(parents=True)
    (profile / "a_first").write_bytes(b"first")
    (profile / "z" / "shadow").write_bytes(b"the tenant's own, as long as " + b"x" * len(SECRET))
    real_open, swapped = os.open, []

    def open_and_swap(path, flags, *args, **kwargs):
        if not swapped and os.fspath(path).endswith("a_first"):
            swapped.append(True)
            os.rename(profile / "z", tmp_path / "z.away")
            (profile / "z").symlink_to(host_dir)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_and_swap)
    try:
        archive = pa.pack(profile, max_bytes=10**7)
    except pa.ArchiveError:
        archive = None
    monkeypatch.undo()
    assert swapped, "the packer never opened a_first: the test did not race it"
    if archive is not None:
        assert all(SECRET not in data for data in _members(archive).values())


def test_a_fifo_swapped_in_after_the_check_does_not_block_the_packer(tmp_path, monkeypatch):
    profile = tmp_path / "profile"
    profile.mkdir()
    (profile / "a_first").write_bytes(b"first")
    (profile / "b_fifo").write_bytes(b"a file when listed")
    real_open, swapped = os.open, []

    def open_and_swap(path, flags, *args, **kwargs):  # checked a regular file, opened as a FIFO
        if not swapped and os.fspath(path).endswith("b_fifo"):
            swapped.append(True)
            os.unlink(profile / "b_fifo")
            os.mkfifo(profile / "b_fifo")
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_and_swap)
    result: list = []
    worker = threading.Thread(target=lambda: result.append(_pack_or_error(profile)), daemon=True)
    worker.start()
    worker.join(60)  # a hang guard, not a speed bound: the fixed packer never waits on a FIFO
    monkeypatch.undo()
    blocked = worker.is_alive()
    if blocked:  # release the old packer's open() (a writer appears and goes: EOF)
        os.close(os.open(profile / "b_fifo", os.O_WRONLY | os.O_NONBLOCK))
        worker.join(10)
    assert swapped
    assert not blocked, "pack blocked opening a FIFO the tenant swapped in (a save that never ends)"
    assert not isinstance(result[0], BaseException) or isinstance(result[0], pa.ArchiveError), result[0]


def _pack_or_error(profile: Path):
    try:
        return pa.pack(profile, max_bytes=10**7)
    except BaseException as exc:  # noqa: BLE001 - handed to the test thread
        return exc


def test_a_huge_sparse_file_is_refused_without_being_read(tmp_path):
    """`truncate -s 1T` on the browser's 512 MiB tmpfs costs no space; zeros compress ~1000:1, so a
    packer that checks the compressed size only after each file would read a terabyte (hours of a
    root thread's CPU) and hold ~1 GB of gzip in memory before refusing it."""
    profile = tmp_path / "profile"
    profile.mkdir()
    with open(profile / "Default-sparse", "wb") as f:
        f.truncate(2**40)
    result: list = []
    worker = threading.Thread(target=lambda: result.append(_pack_or_error(profile)), daemon=True)
    worker.start()
    worker.join(120)  # a hang guard: the fixed packer refuses from the file's size alone
    try:
        assert not worker.is_alive(), "pack is reading a 1 TiB sparse file"
        assert isinstance(result[0], pa.TooLarge), result[0]
    finally:  # pytest keeps tmp dirs: a terabyte of zeros left in /tmp stalls whatever reads it all
        (profile / "Default-sparse").unlink()


def test_names_with_newlines_and_deep_folders_round_trip_inside_the_profile(tmp_path):
    """Held: names are carried as names (a newline, a leading dash, `..` inside a name)."""
    profile = tmp_path / "profile"
    deep = profile.joinpath(*["d"] * 60)
    deep.mkdir(parents=True)
    (deep / "line\nbreak..x").write_bytes(b"1")
    (profile / "-rf").write_bytes(b"2")
    out = tmp_path / "out"
    out.mkdir()
    pa.unpack(pa.pack(profile, max_bytes=10**6), out, max_bytes=10**6)
    assert (out.joinpath(*["d"] * 60) / "line\nbreak..x").read_bytes() == b"1"
    assert (out / "-rf").read_bytes() == b"2"
    assert all(out in p.resolve().parents for p in out.rglob("*"))


def test_a_hard_link_cannot_reach_a_host_file_from_the_browsers_own_filesystem(tmp_path):
    """Held by the sandbox: the browser's home is a tmpfs of its own, so a hard link to a host file
    cannot be made there at all (EXDEV), whoever asks."""
    from services.warm_pool.adapters.mounts import mount_tmpfs, unmount
    home = tmp_path / "home"
    home.mkdir()
    try:
        mount_tmpfs(home, size_mib=4, uid=os.getuid())
    except OSError as exc:
        pytest.fail(f"cannot mount a tmpfs here: {exc}")
    try:
        host_file = tmp_path / "host-file"
        host_file.write_bytes(SECRET)
        with pytest.raises(OSError) as err:
            os.link(host_file, home / "linked")
        assert err.value.errno == 18  # EXDEV
    finally:
        unmount(home)


def test_a_tenant_cannot_flood_warm_pools_log_through_the_origin_tracker(caplog):
    from services.warm_pool.adapters.storage_state import OriginTracker
    tracker = OriginTracker(max_origins=5, max_contexts=2)
    caplog.set_level("WARNING", logger="services.warm_pool.adapters.storage_state")
    for i in range(2000):  # what Page.navigate to http://o<i>.invalid/ in a loop makes the tracker see
        tracker._target({"targetInfo": {"type": "page", "browserContextId": "C1", "url": f"http://o{i}.invalid/"}})
        tracker._target({"targetInfo": {"type": "page", "browserContextId": f"X{i}", "url": "http://a.invalid/"}})
    assert len(tracker.origins("C1")) == 5  # the caps themselves hold
    assert len(caplog.records) <= 10, f"{len(caplog.records)} warnings from one tenant's navigations"


def test_unpacked_files_carry_no_mode_bits_of_the_archive_and_belong_to_the_browser(tmp_path):
    """Held: unpack (root) takes only names and bytes from an archive: a setuid, world-writable
    member comes out a plain file, and every entry is handed to the browser's uid."""
    from services.warm_pool.adapters.browser_dirs import unpack_owned as _unpack_owned
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        d = tarfile.TarInfo("Default")
        d.type, d.mode = tarfile.DIRTYPE, 0o7777
        tar.addfile(d)
        f = tarfile.TarInfo("Default/run-me")
        f.mode, f.size, f.uid = 0o6777, 4, 0
        tar.addfile(f, io.BytesIO(b"\x7fELF"))
    target = tmp_path / "profile"
    _unpack_owned(buf.getvalue(), target, max_bytes=10**6, uid=54321)
    for path in (target, target / "Default", target / "Default" / "run-me"):
        st = path.lstat()
        assert st.st_uid == 54321 and not st.st_mode & 0o7002, (path, oct(st.st_mode))
