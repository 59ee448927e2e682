"""A tenant's attacks on the downloads store (red team, issue 18).

The byte cap (DOWNLOADS_MAX_MIB) does not bound how many files a session leaves: an empty file
costs no budget but an inode in the store every tenant shares (`DOWNLOADS_ROOT`) and a row in
warm_pool's database, kept 24 h. A client with nothing but CDP made 300 empty downloads in 49 s
on this loaded host (one `Target.createTarget` per file, an anchor click with a Blob in each: the
per-tab download limiter allows one each), and its browser's tmpfs allows ~32,000 inodes.
"""
import uuid

import pytest

from services.warm_pool.adapters import downloads as store

CAP = 1000  # what the store keeps of one session at most, kept or dropped (store.MAX_FILES)


@pytest.fixture
def tree(tmp_path):
    home, session = tmp_path / "home", str(uuid.uuid4())
    (home / "downloads" / session).mkdir(parents=True)
    return home, home / "downloads" / session, tmp_path / "store", session


def _stored(root, session) -> int:
    directory = root / "t" / session
    return len(list(directory.iterdir())) if directory.exists() else 0


def test_a_session_of_many_empty_downloads_leaves_a_bounded_number_of_files_and_rows(tree):
    home, src, root, session = tree
    for i in range(CAP + 300):
        (src / f"f{i:05}").write_bytes(b"")
    got = store.collect(home, session, store=root, tenant="t", taken=set(), budget=10**6)
    assert len(got) <= CAP, f"{len(got)} rows for one session"
    assert _stored(root, session) <= CAP


def test_the_file_cap_holds_across_collections_of_one_session(tree):
    """A context session's files are collected each time its host gives them up; `taken` holds the
    names of its earlier rows (kept or dropped)."""
    home, src, root, session = tree
    for i in range(10):
        (src / f"late{i}").write_bytes(b"x")
    earlier = {f"e{i}" for i in range(CAP - 1)}
    got = store.collect(home, session, store=root, tenant="t", taken=earlier, budget=10**6)
    assert len(got) <= 1


def test_files_past_the_byte_cap_are_recorded_within_the_file_cap(tree):
    """Dropped files are rows too: past the byte budget each one is still recorded `over_cap`."""
    home, src, root, session = tree
    for i in range(CAP + 50):
        (src / f"big{i:05}").write_bytes(b"yy")
    got = store.collect(home, session, store=root, tenant="t", taken=set(), budget=1)
    assert len(got) <= CAP and all(c.dropped == "over_cap" for c in got)


def test_a_download_setting_wrapped_twice_or_escaped_inside_a_wrapped_message_is_still_rewritten():
    """Held: the browser relay's guard looks inside Target.sendMessageToTarget however deep, and an
    inner message with a key given twice is refused rather than guessed at."""
    import json

    from services.sessions import downloads_guard
    own = "/browser/downloads/s1"
    inner = '{"id":1,"method":"Page.setDownloadBehavio\\u0072","params":{"behavior":"allow","downloadPath":"/browser/profile"}}'
    once = json.dumps({"id": 2, "method": "Target.sendMessageToTarget", "params": {"sessionId": "A", "message": inner}})
    twice = json.dumps({"id": 3, "method": "Target.sendMessageToTarget", "params": {"sessionId": "B", "message": once}})
    out, refusal = downloads_guard.guard(twice, own)
    sent = json.loads(json.loads(json.loads(out)["params"]["message"])["params"]["message"])
    assert refusal is None and sent["params"] == {"behavior": "allow", "downloadPath": own}
    dup = '{"id":1,"method":"Runtime.evaluate","method":"Page.setDownloadBehavior","params":{"behavior":"allow"}}'
    wrapped = json.dumps({"id": 4, "method": "Target.sendMessageToTarget", "params": {"sessionId": "A", "message": dup}})
    out, refusal = downloads_guard.guard(wrapped, own)
    assert out is None and refusal is not None
