"""SIGTERM and SIGHUP (systemd, timeouts, shutdowns) end a run like Ctrl-C does:
a clear message, exit 128 + the signal, no temp files left, the journal kept
for the next run, which finishes the mirror."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

import torture
from conftest import assert_mirror


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(".btsoot-tmp-")]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_stop_signal_ends_a_backup_cleanly(block, sig: signal.Signals) -> None:
    env, src, dst = block
    for d in range(6):
        (src / f"d{d}").mkdir()
        for i in range(40):
            (src / f"d{d}" / f"f{i}").write_bytes(os.urandom(3000 + i))
    # Every remote call slowed: the run is still copying when the signal comes.
    p, r = torture.start(env.vars(), ("backup", "b"), slow=0.004)
    try:
        assert os.read(r, 1) == b"R"
        # Wait until files are arriving on the remote, then stop the run.
        for _ in range(2000):
            if any((dst / f"d{d}").is_dir() and any((dst / f"d{d}").iterdir()) for d in range(6)):
                break
            if p.poll() is not None:
                break  # finished before any file arrived: the assertions say so
            time.sleep(0.01)
        p.send_signal(sig)
        _, errb = p.communicate(timeout=60)
        err = errb.decode(errors="replace")
    finally:
        os.close(r)
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 128 + sig, (p.returncode, err)
    assert f"stopped by {sig.name}" in err and "Traceback" not in err, err
    assert not temp_files(dst)
    assert (env.state / "blocks" / "b" / "journal.jsonl").exists() or any(
        env.state.rglob("journal*")), "the journal is kept for the next run"
    env.run("backup", "b", check=0)
    assert_mirror(src, dst)
    assert not temp_files(dst)


def test_a_run_log_record_naming_a_non_utf8_path_is_written(tmp_path: Path) -> None:
    """A fatal error's message may name a path that is not UTF-8: the run is still
    logged (that name's odd bytes as \\xNN), and `list` reads the log."""
    import orjson

    from btsoot.state import BlockState

    st = BlockState(str(tmp_path / "b"))
    st.ensure()
    st.log_run({"result": "failed", "exit_code": 6,
                "error": "remote: write " + os.fsdecode(b"/r/caf\xe9") + ": File too large"})
    rec = orjson.loads((tmp_path / "b" / "runs.jsonl").read_bytes().splitlines()[-1])
    assert rec["error"] == "remote: write /r/caf\\xe9: File too large"
    assert st.last_run() == rec
