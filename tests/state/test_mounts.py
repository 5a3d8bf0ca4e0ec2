"""Which filesystem holds the state file: SQLite's write-ahead log and locks are not for network filesystems,
and the operator is told so as the bridge starts, in /readyz and by `otel-bridge check`."""

import logging
from pathlib import Path

import pytest

from otel_bridge.config import Settings
from otel_bridge.export.otlp import NoSender
from otel_bridge.preflight import check
from otel_bridge.runtime import Bridge
from otel_bridge.state import mounts
from otel_bridge.state.sqlite_store import SqliteStore

# As /proc/self/mountinfo reads on a Kubernetes node: the root, a local volume, an NFS volume (EFS), a
# share mounted over it later, and WSL's view of a Windows drive, whose mount point has a space.
MOUNTINFO = """\
22 1 253:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
30 22 253:2 / /var/lib/local rw,relatime shared:2 - xfs /dev/vdb rw
31 22 0:50 / /var/lib/efs rw,relatime shared:3 - nfs4 fs-1.efs.amazonaws.com:/ rw,vers=4.1
32 31 0:51 / /var/lib/efs/cache rw,relatime shared:4 - tmpfs tmpfs rw
33 22 0:52 / /mnt/c/Program\\040Files rw,noatime - 9p drvfs rw
34 31 0:53 / /var/lib/efs rw,relatime shared:5 - cifs //files/share rw
"""


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/var/lib/otel-bridge/s.db", "ext4"),  # below the root alone
        ("/var/lib/local/s.db", "xfs"),
        ("/var/lib/localized/s.db", "ext4"),  # a longer name is no mount below /var/lib/local
        ("/var/lib/efs/cache/s.db", "tmpfs"),  # the deepest mount point wins
        ("/var/lib/efs/s.db", "cifs"),  # two mounts on one point: the later is on top
        ("/mnt/c/Program Files/s.db", "9p"),  # the kernel's escapes read back
    ],
)
def test_the_deepest_mount_above_a_path_names_its_filesystem(path, kind):
    assert mounts.filesystem_type(Path(path), MOUNTINFO) == kind


def test_the_kernel_names_the_filesystem_of_a_state_file_not_made_yet(tmp_path):
    # This machine's own mount table: the folder's filesystem, whatever it is here.
    assert mounts.filesystem_of(tmp_path / "not-yet" / "s.db") == mounts.filesystem_of(tmp_path)
    assert mounts.filesystem_of(tmp_path)


@pytest.fixture
def on_nfs(tmp_path, monkeypatch):
    """A mount table in which `tmp_path` is an NFS volume (no network filesystem can be mounted here)."""
    table = tmp_path / "mountinfo"
    table.write_text(f"22 1 253:1 / / rw - ext4 /dev/vda1 rw\n31 22 0:50 / {tmp_path} rw - nfs4 fs-1:/ rw\n")
    monkeypatch.setattr(mounts, "_MOUNTINFO", table)
    return tmp_path


def test_a_state_file_on_a_local_disk_has_no_risk(tmp_path):
    store = SqliteStore(tmp_path / "s.db")
    assert store.risks() == []
    store.close()


def test_a_state_file_on_a_network_filesystem_is_said_to_risk_its_writes_and_its_lock(on_nfs):
    store = SqliteStore(on_nfs / "s.db")
    (said,) = store.risks()
    store.close()
    assert said.startswith(f"the state file {on_nfs / 's.db'} is on a network filesystem (nfs4): ")
    assert "disk I/O error" in said and "both take the file" in said
    assert said.endswith(
        "keep the state on a local disk (a ReadWriteOnce volume), or give the bridges a shared Redis state (--state redis://…)"
    )


def test_a_bridge_with_its_state_on_a_network_filesystem_warns_as_it_starts_and_in_readyz(on_nfs, caplog):
    settings = Settings(state=str(on_nfs / "s.db"), dead_letter=on_nfs / "d.jsonl", span_dead_letter=on_nfs / "x.jsonl")
    bridge = Bridge(settings, trace_sender=NoSender(), metric_sender=NoSender())
    with caplog.at_level(logging.WARNING, logger="otel_bridge.runtime"):
        bridge.start(follow=False)
    readiness = bridge.readiness()
    bridge.stop()
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert "network filesystem (nfs4)" in warning
    assert readiness["ready"] is True and readiness["warnings"] == [warning]


def test_check_names_the_network_filesystem_before_and_after_the_state_is_made(on_nfs):
    settings = Settings(state=str(on_nfs / "s.db"), dead_letter=on_nfs / "d.jsonl", span_dead_letter=on_nfs / "x.jsonl")
    findings = {f.what: f for f in check(settings, timeout_seconds=1)}
    assert findings["state"].ok is True and "does not exist yet" in findings["state"].detail
    assert "network filesystem (nfs4)" in findings["state"].detail
    SqliteStore(on_nfs / "s.db").close()
    findings = {f.what: f for f in check(settings, timeout_seconds=1)}
    assert findings["state"].ok is True and "spans wait for export" in findings["state"].detail
    assert "network filesystem (nfs4)" in findings["state"].detail
