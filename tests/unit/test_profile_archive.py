"""Profiles at rest: what is packed, what unpacks, and that a sealed blob opens only where it belongs."""
import base64
import io
import os
import tarfile

import pytest

from services.warm_pool import profile_archive as pa

KEY_A, KEY_B = base64.b64encode(b"a" * 32).decode(), base64.b64encode(b"b" * 32).decode()


def test_state_is_packed_caches_locks_and_links_are_not(tmp_path):
    profile = tmp_path / "profile"
    (profile / "Default" / "Local Storage" / "leveldb").mkdir(parents=True)
    (profile / "Default" / "Cookies").write_bytes(b"cookie-db")
    (profile / "Default" / "Local Storage" / "leveldb" / "000003.log").write_bytes(b"storage")
    (profile / "Default" / "Cache" / "Cache_Data").mkdir(parents=True)
    (profile / "Default" / "Cache" / "Cache_Data" / "data_0").write_bytes(b"x" * 1000)
    (profile / "SingletonLock").write_text("lock")
    (profile / "Default" / "evil").symlink_to("/etc/shadow")  # a tenant's link is never followed
    out = tmp_path / "restored"
    out.mkdir()
    pa.unpack(pa.pack(profile, max_bytes=10**6), out, max_bytes=10**6)
    names = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert names == ["Default/Cookies", "Default/Local Storage/leveldb/000003.log"]
    assert (out / "Default" / "Cookies").read_bytes() == b"cookie-db"


def test_a_profile_over_its_cap_is_refused(tmp_path):
    (tmp_path / "big").write_bytes(os.urandom(200_000))  # random: does not compress
    with pytest.raises(pa.TooLarge):
        pa.pack(tmp_path, max_bytes=100_000)


@pytest.mark.parametrize("name", ["../escape", "/abs/path", "a/../../escape"])
def test_unpack_never_writes_outside_the_profile(tmp_path, name):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo(name)
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    target = tmp_path / "p"
    target.mkdir()
    with pytest.raises(pa.ArchiveError):
        pa.unpack(buf.getvalue(), target, max_bytes=100)
    assert not (tmp_path / "escape").exists()


def test_links_in_an_archive_are_refused(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("link")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(pa.ArchiveError):
        pa.unpack(buf.getvalue(), tmp_path, max_bytes=100)


def test_a_sealed_profile_opens_with_its_key_for_its_profile_and_version_only():
    ring = pa.KeyRing.parse(f"k1:{KEY_A}")
    blob = pa.seal(b"marker-value", ring=ring, aad=pa.aad_for("p1", 3))
    assert b"marker-value" not in blob
    assert pa.unseal(blob, ring=ring, aad=pa.aad_for("p1", 3)) == b"marker-value"
    for aad in (pa.aad_for("p2", 3), pa.aad_for("p1", 2)):
        with pytest.raises(pa.ArchiveError):
            pa.unseal(blob, ring=ring, aad=aad)
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(pa.ArchiveError):
        pa.unseal(tampered, ring=ring, aad=pa.aad_for("p1", 3))


def test_keys_rotate_new_blobs_use_the_first_old_ones_still_open():
    old = pa.seal(b"v1", ring=pa.KeyRing.parse(f"k1:{KEY_A}"), aad=b"x")
    rotated = pa.KeyRing.parse(f"k2:{KEY_B},k1:{KEY_A}")
    assert pa.unseal(old, ring=rotated, aad=b"x") == b"v1"
    new = pa.seal(b"v2", ring=rotated, aad=b"x")
    assert new[5:7] == b"k2"
    with pytest.raises(pa.ArchiveError, match="k2"):
        pa.unseal(new, ring=pa.KeyRing.parse(f"k1:{KEY_A}"), aad=b"x")


@pytest.mark.parametrize("setting", ["", "nokey", f"k1:{base64.b64encode(b'short').decode()}", "k1:not-base64!"])
def test_bad_key_settings_are_refused(setting):
    with pytest.raises(ValueError):
        pa.KeyRing.parse(setting)
