"""Every file the package writes and later reads: atomic writes, JSON documents that carry
the hash of their own content, and the JSON + NPZ pair of a saved result.

**Names.**  A result saved as ``DIR/NAME`` is ``DIR/NAME.json`` + ``DIR/NAME.<h>.npz``: the
suffix is appended to the name as given, never substituted for its last dotted part
(``sgd_lr0.1`` and ``sgd_lr0.2`` are two results, not one).  A trailing ``.json`` or
``.npz`` on the name given is dropped first, so the JSON's own path names the result too.

**Hashes.**  A JSON document written by :func:`hashed_json` holds ``"content_sha256"``: the
SHA-256 of its canonical form (keys sorted, no whitespace, the hash entry left out).
:func:`read_json` recomputes it, so an edited, truncated or swapped document is refused,
never trusted.  The pair's ``.npz`` is named by the first 16 hex digits of its bytes'
SHA-256, and its JSON (itself content-hashed) records the full hash: the JSON vouches for
the arrays, its own hash for itself.

**Timings apart from data.**  Arrays whose name is ``wall`` or ends in ``_wall`` / ``.wall``
(:data:`TIMING`: wall-clock seconds of the work, which differ from run to run) are not
written into the ``.npz`` but into the JSON, under ``"timings"``; :func:`load_pair` returns
them with the arrays as before.  So the ``.npz`` — and its hash, the file's name — holds the
data alone: two identical runs write byte-identical ``.npz`` files under the same name.

**Atomicity.**  Every write goes to a temporary file in the same folder, is fsync'ed and
``os.replace``'d: a crash leaves the old file or the new one.  :func:`save_pair` writes the
``.npz`` under its new content name first, then replaces the JSON (the commit point), then
deletes the previous ``.npz``; temporaries of a save that was killed are deleted by the
next save of that name.  :func:`load_pair` checks the JSON's hash, the ``.npz``'s hash, and
that the labels stored with the arrays equal the JSON's, raising :class:`ResultFileError`
(a ``ValueError`` naming the file) for anything else — including files of the earlier
layouts, which cannot be verified: they are refused, with the way out in the message.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

__all__ = ["ResultFileError", "CONTENT_HASH", "LABELS", "TIMING", "TIMINGS", "base_path",
           "json_path",
           "content_hash", "hashed_json", "verify_hash", "read_json", "write_hashed_json",
           "save_pair", "load_pair", "atomic_write_text", "atomic_write_npz",
           "remove_temporaries", "jsonable", "writable_folder"]

CONTENT_HASH = "content_sha256"   # the entry of a JSON document that hashes the rest of it
TIMINGS = "timings"               # the entry of a saved result's JSON that holds its timing arrays
#: names of arrays that are wall-clock timings, kept out of the hashed data (module docstring)
TIMING = re.compile(r"(?:.*[._])?wall")
LABELS = "__labels__"             # the entry of a saved .npz that repeats the JSON's labels
_HEX16 = r"[0-9a-f]{16}"


class ResultFileError(ValueError):
    """A saved file is missing, unreadable, altered, or its files do not belong together."""


# ---- names ----------------------------------------------------------------------------------
def base_path(path: str | os.PathLike) -> Path:
    """The name of a saved result: ``path`` as given, less a trailing ``.json`` / ``.npz``
    (never any other dotted part: ``run_lr0.1`` stays ``run_lr0.1``)."""
    text = os.fspath(path)
    for suffix in (".json", ".npz"):
        if text.endswith(suffix) and len(Path(text).name) > len(suffix):
            return Path(text[:-len(suffix)])
    return Path(text)


def json_path(path: str | os.PathLike) -> Path:
    """``DIR/NAME.json`` of the result named ``path`` (:func:`base_path`)."""
    base = base_path(path)
    return base.with_name(base.name + ".json")


# ---- content-hashed JSON documents ------------------------------------------------------------
def jsonable(o: Any) -> Any:
    """``default=`` of ``json.dumps`` for results: arrays as lists, NumPy scalars as Python
    scalars, anything else as its ``str``."""
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer, np.bool_)):
        return o.item()
    return str(o)


def _canonical(doc: dict) -> bytes:
    body = {k: v for k, v in doc.items() if k != CONTENT_HASH}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      default=jsonable).encode("ascii")


def content_hash(doc: dict) -> str:
    """SHA-256 (hex) of ``doc``'s canonical JSON form, its ``content_sha256`` entry left out.
    ``doc`` must be as read back from JSON (:func:`hashed_json` normalises it first)."""
    return hashlib.sha256(_canonical(doc)).hexdigest()


def hashed_json(doc: dict, *, indent: int | None = 1,
                default: Callable[[Any], Any] = jsonable) -> str:
    """The JSON text of ``doc`` (a dict) with ``"content_sha256"``, the hash of the rest of
    it as it will read back (:func:`content_hash`), as its last entry."""
    if not isinstance(doc, dict):
        raise TypeError(f"a hashed JSON document must be a dict, got {type(doc).__name__}")
    plain = json.loads(json.dumps({k: v for k, v in doc.items() if k != CONTENT_HASH},
                                  default=default))
    plain[CONTENT_HASH] = content_hash(plain)
    return json.dumps(plain, indent=indent)


def verify_hash(doc: Any, where: str) -> dict:
    """``doc`` (parsed JSON) without its hash entry, if it is a dict whose
    ``content_sha256`` matches its content; :class:`ResultFileError` naming ``where``
    otherwise."""
    if not isinstance(doc, dict):
        raise ResultFileError(f"{where}: expected a JSON object written by sdeverify, got "
                              f"{type(doc).__name__}")
    if CONTENT_HASH not in doc:
        raise ResultFileError(f"{where}: has no {CONTENT_HASH} entry, so its content cannot be "
                              "verified (written by an older sdeverify, or edited); write it "
                              "again with this version")
    if doc[CONTENT_HASH] != content_hash(doc):
        raise ResultFileError(f"{where}: its content does not match its content hash "
                              f"({CONTENT_HASH}): the file was edited or damaged after it was "
                              "written")
    return {k: v for k, v in doc.items() if k != CONTENT_HASH}


def read_json(path: str | os.PathLike, *, hashed: bool = True) -> dict:
    """The JSON object in ``path``, its content hash checked when ``hashed``
    (:func:`verify_hash`); :class:`ResultFileError` naming the file if it is missing,
    unparsable, not an object or altered."""
    where = str(path)
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise ResultFileError(f"{where}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ResultFileError(f"{where}: unreadable ({exc})") from None
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ResultFileError(f"{where}: not valid JSON ({exc})") from None
    if not hashed:
        if not isinstance(doc, dict):
            raise ResultFileError(f"{where}: expected a JSON object, got {type(doc).__name__}")
        return doc
    return verify_hash(doc, where)


def write_hashed_json(path: str | os.PathLike, doc: dict) -> Path:
    """Write ``doc`` to ``path`` as content-hashed JSON (:func:`hashed_json`), atomically."""
    path = Path(path)
    atomic_write_text(path, hashed_json(doc))
    return path


# ---- one JSON + one NPZ, saved and loaded as a unit -------------------------------------------
def save_pair(path: str | os.PathLike, doc: dict, arrays: dict, *,
              labels: tuple = ()) -> Path:
    """Save ``doc`` as ``NAME.json`` (content-hashed) and ``arrays`` as ``NAME.<hash>.npz``,
    as one unit (module docstring); ``labels`` names entries of ``doc`` copied into the
    ``.npz`` too, so that :func:`load_pair` can check them.  Arrays named as timings
    (:data:`TIMING`) go into the JSON's ``"timings"`` instead of the ``.npz``, so the
    ``.npz`` and its hash depend on the data alone.  Returns the JSON path."""
    jpath = json_path(path)
    folder, stem = jpath.parent, jpath.name[:-len(".json")]
    folder.mkdir(parents=True, exist_ok=True)
    remove_temporaries(folder, stem)
    arrays = dict(arrays)
    if LABELS in arrays:
        raise ValueError(f"{LABELS!r} is reserved in saved arrays")
    for reserved in ("npz", "npz_sha256", CONTENT_HASH, TIMINGS):
        if reserved in doc:
            raise ValueError(f"{reserved!r} is reserved in a saved document")
    timings = {k: np.asarray(arrays.pop(k), dtype=np.float64).tolist()
               for k in sorted(arrays) if TIMING.fullmatch(k)}
    if timings:
        doc = dict(doc, **{TIMINGS: timings})
    arrays[LABELS] = np.array(json.dumps({k: doc[k] for k in labels}, default=jsonable))
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    data = buf.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    npz_name = f"{stem}.{digest[:16]}.npz"
    _atomic_write(folder / npz_name, lambda f: f.write(data), "wb", suffix=".npz")
    atomic_write_text(jpath, hashed_json(dict(doc, npz=npz_name, npz_sha256=digest)))  # commit
    pattern = re.compile(re.escape(stem) + r"\." + _HEX16 + r"\.npz")
    for old in folder.iterdir():
        if old.name != npz_name and pattern.fullmatch(old.name):
            try:
                old.unlink()
            except OSError:
                pass
    return jpath


def load_pair(path: str | os.PathLike, *, labels: tuple = ()) -> tuple[dict, dict, str]:
    """``(doc, arrays, where)`` of a pair written by :func:`save_pair`, after checking the
    JSON's content hash, the ``.npz``'s hash and the labels stored with the arrays;
    :class:`ResultFileError` naming the file otherwise."""
    jpath = json_path(path)
    where = str(jpath)
    if not jpath.exists():
        raise ResultFileError(f"{where}: no such result file")
    doc = read_json(jpath, hashed=False)
    if "npz" not in doc or "npz_sha256" not in doc:
        raise ResultFileError(f"{where}: not a result saved by this sdeverify (no hashed arrays "
                              "file named in it: an earlier, unverifiable layout or an edited "
                              "file); run it again to save it in the current layout")
    doc = verify_hash(doc, where)
    npz_name = doc["npz"]
    if not isinstance(npz_name, str) or Path(npz_name).name != npz_name \
            or not npz_name.endswith(".npz"):
        raise ResultFileError(f"{where}: names the arrays file {npz_name!r}, which is not a "
                              "file name in its folder")
    npz_path = jpath.parent / npz_name
    try:
        data = npz_path.read_bytes()
    except OSError:
        raise ResultFileError(f"{where} names {npz_name}, which is missing") from None
    if hashlib.sha256(data).hexdigest() != doc["npz_sha256"]:
        raise ResultFileError(f"{npz_path} does not match the hash recorded in {where} "
                              "(modified or from another result)")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as exc:
        raise ResultFileError(f"{where}: its .npz is unreadable ({exc})") from None
    timings = doc.pop(TIMINGS, {})
    if not isinstance(timings, dict) or any(not TIMING.fullmatch(str(k)) or k in arrays
                                            for k in timings):
        raise ResultFileError(f"{where}: its {TIMINGS!r} entry is not a set of timing arrays "
                              "apart from the .npz's")
    try:
        arrays.update({k: np.asarray(v, dtype=np.float64) for k, v in timings.items()})
    except (TypeError, ValueError):
        raise ResultFileError(f"{where}: its {TIMINGS!r} are not arrays of numbers") from None
    missing = [k for k in labels if k not in doc]
    if missing:
        raise ResultFileError(f"{where}: fields {missing} are missing")
    if LABELS in arrays:
        try:
            stored = json.loads(str(arrays.pop(LABELS)))
        except ValueError:
            raise ResultFileError(f"{npz_path}: its labels entry is not valid JSON") from None
        for k in labels:
            if k in stored and json.loads(json.dumps(doc.get(k), default=jsonable)) != stored[k]:
                raise ResultFileError(f"{where}: the {k} of the .json ({doc.get(k)!r}) differ "
                                      f"from those stored with the arrays ({stored[k]!r})")
    return doc, arrays, where


def remove_temporaries(folder: Path, stem: str) -> None:
    """Delete the temporaries that saves of result ``stem`` killed mid-write left in
    ``folder`` (``.STEM.json.*`` and ``.STEM.<hash>.npz.*``; never another name's)."""
    pattern = re.compile(re.escape(f".{stem}.") + r"(json\.[A-Za-z0-9_]+|" + _HEX16
                         + r"\.npz\.[A-Za-z0-9_]+\.npz)")
    try:
        entries = list(folder.iterdir())
    except OSError:
        return
    for tmp in entries:
        if pattern.fullmatch(tmp.name):
            try:
                tmp.unlink()
            except OSError:
                pass


# ---- atomic writes ----------------------------------------------------------------------------
def _atomic_write(path: Path, write: Callable[[Any], Any], mode: str, suffix: str = "") -> None:
    """Write via a temporary file in the same folder, fsync, ``os.replace``: all or nothing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    try:
        os.chmod(tmp, 0o666 & ~_umask())          # as open() would create it (mkstemp: 0600)
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _umask() -> int:
    """The process umask, read without changing it (os.umask would, for all threads)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable (best effort: not every platform can open a directory)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` all or nothing: a temporary file in the same folder,
    fsync, ``os.replace`` (a crash leaves the old file or the new one, never a mix)."""
    _atomic_write(Path(path), lambda f: f.write(text), "w")


def atomic_write_npz(path: str | os.PathLike, arrays: dict) -> None:
    """Write ``arrays`` (name -> array) as an ``.npz`` at ``path``, all or nothing (as
    :func:`atomic_write_text`)."""
    _atomic_write(Path(path), lambda f: np.savez(f, **arrays), "wb", suffix=".npz")


def writable_folder(flag: str, folder: str | os.PathLike) -> Path:
    """Create ``folder`` if needed and prove it writable (create and delete a file in it),
    so that a run never fails at the very end, after the work, on its output."""
    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".sdeverify-write-test.")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ValueError(f"{flag} {str(folder)!r} is not a writable folder "
                         f"({exc.strerror or exc})") from None
    return path
