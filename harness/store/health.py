"""Damaged parts: a file that cannot be read (garbage, truncated) or whose columns do not fit its
table's schema, a merged part that does not match the checksum its manifest recorded, and stray
files (in a table folder, not parts: readers ignore them). Readers leave a damaged part out of
the table's view and say so in one warning line (a report or correlation over such a store says
so at its top and in its last line, ``check_left_out``); ``harness doctor`` lists them all and,
with ``--fix``, restores a damaged merged part from the files it replaced (``restore``) and moves
everything else to ``<root>/quarantine/`` (never deletes). Checking costs one footer read per
part, and readers only pay it when DuckDB could not bind a table as it is; checksums (a read of
each merged part) are doctor's."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import HarnessError
from harness.store.fileio import atomic_write, file_lock
from harness.store.fits import file_problem
from harness.store.parts import (
    COMPACT_DIR,
    KEPT_DIR,
    LIST,
    MANIFEST,
    Manifest,
    is_merged,
    kept_dir,
    move,
    parts,
    read_manifest,
    replaced_by,
    results_root,
    sidecar,
)
from harness.store.schema import TABLES

QUARANTINE = "quarantine"
_PARQUET_PATH = re.compile(r"""['"]?(/[^'"\s]+?\.parquet)['"]?""")
_warned: set[str] = set()


@dataclass(frozen=True)
class Damage:
    """One unusable file of the store and why; ``kind``: 'damaged', or 'stray' for a file that
    is not a part (readers ignore it)."""

    path: Path
    table: str
    reason: str
    kind: str = "damaged"


def scan_files(table: str, files: list[Path]) -> list[Damage]:
    """The unusable files among ``files`` (one footer read each)."""
    out = []
    for p in files:
        reason = file_problem(table, p)
        if reason:
            out.append(Damage(Path(p), table, reason))
    return out


def named_part(error: BaseException, root: Path) -> Path | None:
    """The part of the store an error message names, if any."""
    for m in _PARQUET_PATH.finditer(str(error)):
        p = Path(m.group(1))
        if p.is_relative_to(root) and p.exists():
            return p
    return None


def _fix_hint(path: Path, root: Path) -> str:
    """What ``harness doctor --fix`` does with a damaged part."""
    if is_merged(path) and kept_dir(path.parent, path.name).is_dir():
        return "`harness doctor --fix` restores the parts it replaced"
    return f"`harness doctor --fix` moves it to {root / QUARANTINE}"


def warn(d: Damage, root: Path) -> None:
    """One warning line per damaged part and process."""
    if str(d.path) in _warned:
        return
    _warned.add(str(d.path))
    sys.stderr.write(
        f"harness: warning: {d.path}: left out of {d.table} ({d.reason}); {_fix_hint(d.path, root)}\n"
    )


def left_out_line(left_out: Sequence[Damage]) -> str:
    """The damaged parts a read left out, in a few words: '2 damaged parts left out (nc:
    compact-….parquet; finetune: part-….parquet)'."""
    n = len(left_out)
    names = "; ".join(f"{d.table}: {d.path.name}" for d in left_out)
    return f"{n} damaged part{'s' if n != 1 else ''} left out ({names})"


def damage_banner(left_out: Sequence[Damage]) -> str:
    """The line at the top of a report or correlation that read a damaged store."""
    return (
        f"Damaged store: {left_out_line(left_out)}; their rows are missing from everything "
        "below. `harness doctor` checks the store; `harness doctor --fix` restores a compacted "
        "part from the parts it replaced."
    )


def check_left_out(left_out: Sequence[Damage], what: str, allow: bool) -> None:
    """The last word of a report or correlation that read a damaged store: nothing when no part
    was left out; else one line, a warning on stderr with ``allow`` (``--allow-damaged``),
    otherwise HarnessError (exit 1): results silently missing rows must not pass as complete."""
    if not left_out:
        return
    line = f"the {what} read a damaged store: {left_out_line(left_out)}, their rows are missing"
    if allow:
        sys.stderr.write(f"harness: warning: {line} (--allow-damaged)\n")
        return
    raise HarnessError(
        f"{line}; `harness doctor --fix` repairs the store, --allow-damaged accepts the {what} "
        "as it is",
        code=1,
    )


# ---------------------------------------------------------------------------------------------
# doctor: the full check


def merged_problem(path: Path) -> str | None:
    """Why a merged part does not match its manifest (None when it does, or it has none):
    its size, then its sha256 (a read of the whole file)."""
    man = read_manifest(path.parent, path.name)
    why = man.part.problem(path) if man is not None else None
    return None if why is None else f"does not match its manifest: {why}"


def strays(root: str | os.PathLike | None = None, tables: list[str] | None = None) -> list[Damage]:
    """Files and folders in a table's folder (or its ``_compact/``) that are not the store's:
    readers ignore them, so rows in them are in no table. Hidden names (temporaries of writes
    in flight, lock files) are not strays."""
    base = results_root(root)
    out = []
    for t in tables or TABLES:
        tdir = base / t
        for folder, ok in ((tdir, _table_entry), (tdir / COMPACT_DIR, _compact_entry)):
            try:
                entries = sorted(os.scandir(folder), key=lambda e: e.name)
            except (FileNotFoundError, NotADirectoryError):
                continue
            for e in entries:
                if not e.name.startswith(".") and not ok(e.name, e.is_dir()):
                    what = "folder" if e.is_dir() else "file"
                    why = f"a stray {what}, not a part: readers ignore it"
                    out.append(Damage(Path(e.path), t, why, kind="stray"))
    return out


def _table_entry(name: str, is_dir: bool) -> bool:
    return name == COMPACT_DIR if is_dir else name.startswith("part-") and name.endswith(".parquet")


def _compact_entry(name: str, is_dir: bool) -> bool:
    if is_dir:
        return name == KEPT_DIR
    return name.startswith("compact-") and name.endswith((".parquet", LIST, MANIFEST))


def scan(root: str | os.PathLike | None = None, tables: list[str] | None = None) -> list[Damage]:
    """Every damaged part of the store (doctor's full check): footers and schemas of the live
    parts, each live merged part against the checksum its manifest recorded, and strays."""
    base = results_root(root)
    out = []
    for t in tables or TABLES:
        for p in parts(t, base):
            why = (merged_problem(p) if is_merged(p) else None) or file_problem(t, p)
            if why:
                out.append(Damage(p, t, why))
    return out + strays(base, tables)


# ---------------------------------------------------------------------------------------------
# doctor --fix: restore, quarantine


def _to_quarantine(base: Path, path: Path) -> Path:
    """Move ``path`` under ``<base>/quarantine/`` keeping its relative path (a name already there
    gets a numbered suffix); return where it went."""
    src = path.resolve()
    dest = base / QUARANTINE / src.relative_to(base)
    dest.parent.mkdir(parents=True, exist_ok=True)
    n = 1
    while dest.exists():
        dest = dest.with_name(f"{src.name}.{n}")
        n += 1
    os.replace(src, dest)
    return dest


def quarantine(root: str | os.PathLike | None, damaged: list[Damage]) -> list[Path]:
    """Move damaged files under ``<root>/quarantine/`` keeping their relative path; return the
    new paths. Nothing is deleted; a name already there gets a numbered suffix."""
    base = results_root(root).resolve()
    return [_to_quarantine(base, Path(d.path)) for d in damaged]


@dataclass
class Restored:
    """What ``restore`` did for one damaged merged part: where it went (``moved_to``), the files
    it replaced that are live again (``restored``, names relative to the table folder), kept
    copies that failed their checksum (now in quarantine) and replaced files with no good copy
    (``lost``: vacuumed or damaged; their rows are gone)."""

    moved_to: Path
    restored: list[str] = field(default_factory=list)
    bad: list[Path] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)


@dataclass
class _Plan:
    moves: list[tuple[Path, Path]] = field(default_factory=list)  # kept copy -> its place
    names: list[str] = field(default_factory=list)  # what is restored
    deeper: list[str] = field(default_factory=list)  # restored in place of a bad merged copy
    bad: list[Path] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    cleared: list[Path] = field(default_factory=list)  # kept folders emptied


def _plan(tdir: Path, man: Manifest, kept: Path, plan: _Plan, depth: int = 0) -> None:
    """Every file ``man`` replaced that has a copy matching its checksum (kept, or still in its
    place after a killed compaction) goes back to its place; a replaced merged part moves with
    its list and manifest, the list first (see ``parts.snapshot``). A merged part whose copy does
    not match is replaced in turn by the files it replaced (``deeper``)."""
    cdir = tdir / COMPACT_DIR
    plan.cleared.append(kept)
    for f in man.replaced:
        place, base = tdir / f.name, Path(f.name).name
        have = kept / base if (kept / base).exists() else place
        merged = f.name.startswith(f"{COMPACT_DIR}/")
        if f.problem(have) is None:
            if merged and have != place:
                for suffix in (LIST, MANIFEST):
                    if (kept / sidecar(base, suffix)).exists():
                        plan.moves.append(
                            (kept / sidecar(base, suffix), cdir / sidecar(base, suffix))
                        )
            if have != place:
                plan.moves.append((have, place))
            plan.names.append(f.name)
            plan.deeper += [f.name] if depth else []
            continue
        if have.exists():
            plan.bad.append(have)
        sub = None
        if merged and depth < 64:
            sub = Manifest.load(kept / sidecar(base, MANIFEST)) or read_manifest(cdir, base)
        if sub is None:
            plan.lost.append(f.name)
        else:
            _plan(tdir, sub, kept_dir(cdir, base), plan, depth + 1)


def restore(
    root: str | os.PathLike | None,
    merged: Path,
    *,
    lock_timeout: float = 600.0,
    on_step: Callable[[str], None] | None = None,
) -> Restored | None:
    """Undo a damaged merged part: the files it replaced go back in place (each verified against
    its manifest's checksum), then the part, its list and manifest go to quarantine. None when
    it has no manifest (compacted before manifests: only quarantine is left).

    Readers see every row once throughout: until the part leaves, its list names everything
    restored (files restored for a bad merged copy are added to it first), so they are ignored;
    moving the part away is the commit. Killed anywhere, the store reads as before or after it
    and running it again finishes it. ``on_step``: called with each step's name as it starts
    (tests kill the process there)."""
    step = on_step or (lambda name: None)
    base = results_root(root).resolve()
    merged = merged.resolve()
    cdir, tdir = merged.parent, merged.parent.parent
    with file_lock(cdir / ".lock", timeout=lock_timeout):
        man = read_manifest(cdir, merged.name)
        if man is None or not merged.exists():
            return None
        plan = _Plan()
        _plan(tdir, man, kept_dir(cdir, merged.name), plan)
        listed = cdir / sidecar(merged.name, LIST)
        step("list")
        if plan.deeper:
            names = sorted((replaced_by(cdir, merged.name) or set()) | set(plan.deeper))
            atomic_write(listed, lambda p: p.write_text("\n".join(names) + "\n"), fsync=True)
        step("restore")
        for src, dest in plan.moves:
            move(src, dest)
        step("commit")
        done = Restored(_to_quarantine(base, merged), plan.names, lost=plan.lost)
        step("tidy")
        for side in (listed, cdir / sidecar(merged.name, MANIFEST)):
            if side.exists():
                _to_quarantine(base, side)
        done.bad = [_to_quarantine(base, p) for p in plan.bad if p.exists()]
        for folder in plan.cleared:
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        step("done")
    return done


@dataclass(frozen=True)
class Fix:
    """What ``repair`` did with one damaged file: where it went, and for a merged part what
    was restored in its place."""

    damage: Damage
    moved_to: Path
    restored: Restored | None = None


def repair(root: str | os.PathLike | None, damaged: Sequence[Damage]) -> list[Fix]:
    """``harness doctor --fix``: each damaged merged part with a manifest is restored from the
    files it replaced (``restore``); every other damaged or stray file goes to quarantine."""
    base = results_root(root).resolve()
    out = []
    for d in damaged:
        r = restore(base, Path(d.path)) if d.kind == "damaged" and is_merged(Path(d.path)) else None
        out.append(Fix(d, r.moved_to if r else _to_quarantine(base, Path(d.path)), r))
    return out
