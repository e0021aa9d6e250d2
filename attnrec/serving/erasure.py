"""The erasure list that travels with a model bundle: ``<bundle>/erasures.json``.

The database's tombstones hide a deleted user's fit-time history, but a fresh
database has none. So every deletion is also written next to the bundle whose
history it hides, and a service starting on that bundle merges the list into its
database before serving. The list holds HMAC-SHA256 keys (see
:func:`attnrec.serving.store.user_hmac`), never ids, plus a check value of the
secret: a service started with a different secret could not recognise the
entries, so it refuses to start instead of serving deleted users again.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import os
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

FILE_NAME = "erasures.json"


class SecretMismatch(RuntimeError):
    """The bundle's erasure list was written with another server secret."""


def key_check(secret: bytes) -> str:
    return hmac.new(secret, b"attnrec-erasure-key-check", hashlib.sha256).hexdigest()[:16]


def read_erasures(bundle: Path, secret: bytes) -> set[str]:
    """Tombstone keys recorded with ``bundle`` (empty if none); raises :class:`SecretMismatch`."""
    f = Path(bundle) / FILE_NAME
    if not f.exists():
        return set()
    data = json.loads(f.read_text())
    if data.get("key_check") != key_check(secret):
        raise SecretMismatch(
            f"the bundle's {FILE_NAME} was written with a different server secret, so the users "
            "deleted from it cannot be recognised; start with the original ATTNREC_SECRET")
    return set(data.get("users", ()))


def write_erasures(bundle: Path, secret: bytes, digests: set[str]) -> bool:
    """Add ``digests`` to the bundle's list; False if the directory is read-only.

    Read, merge and atomic replace happen under a file lock, so workers deleting
    users at the same moment never drop each other's entries.
    """
    bundle = Path(bundle)
    try:
        with _locked(bundle):
            merged = set(digests) | read_erasures(bundle, secret)
            return _replace(bundle, secret, merged)
    except (OSError, SecretMismatch) as e:
        log.error("could not record deletions next to the bundle (%s); they hold in this database "
                  "only, not in a fresh one", e)
        return False


@contextlib.contextmanager
def _locked(bundle: Path):
    with open(bundle / ".erasures.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _replace(bundle: Path, secret: bytes, digests: set[str]) -> bool:
    payload = json.dumps({"key_check": key_check(secret), "users": sorted(digests)}, indent=0)
    fd, tmp = tempfile.mkstemp(dir=bundle, prefix=".erasures-", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        fh.write(payload)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, bundle / FILE_NAME)
    return True
