"""Conversation history: SQLite (WAL) with the turns' audio and images as files beside it.

Qt-free so the `history` command and the tests use it without a window. Every media file is
written completely (temporary file, then rename) before the row that names it is committed, so
a crash never leaves a row pointing at half a file. What a crash can leave is the other way round:
a file whose row never got committed, or a temporary file cut off mid-write; the window sweeps
those away when it opens the history. A database that cannot be opened (another program holds a
lock on it, or it is damaged) is moved aside with a timestamp and a fresh one is started;
`HistoryStore.notice` then says so in one line for the window's status area.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import sqlite3
import tempfile
import time
import uuid
import wave
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from engine.errors import OmnivoxError

DB_NAME = "history.sqlite3"
MEDIA_DIR = "media"
LOCK_TIMEOUT_S = 0.5  # at open: longer than any write of ours holds the lock, short enough not to stall start-up
TITLE_CHARS = 60
ORPHAN_AGE_S = 600.0  # unreferenced files younger than this may be another window's write in progress
ROLES = ("user", "assistant")

SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id INTEGER PRIMARY KEY,
    title TEXT NOT NULL DEFAULT '',
    created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS turns (
    id INTEGER PRIMARY KEY,
    conversation INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
    text TEXT NOT NULL DEFAULT '',
    audio_file TEXT,
    audio_seconds REAL,
    image_file TEXT,
    created TEXT NOT NULL,
    timings TEXT,
    interrupted INTEGER NOT NULL DEFAULT 0,
    transcript TEXT
);
CREATE INDEX IF NOT EXISTS turns_by_conversation ON turns (conversation, id);
"""


def default_data_dir() -> Path:
    from platformdirs import user_data_dir

    return Path(user_data_dir("Omnivox", appauthor=False))


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class Conversation:
    id: int
    title: str
    created: str  # ISO 8601, UTC

    @property
    def display_title(self) -> str:
        if self.title:
            return self.title
        local = datetime.fromisoformat(self.created).astimezone()
        return f"Conversation of {local:%d %b %H:%M}"


@dataclass(frozen=True)
class Turn:
    id: int
    conversation: int
    role: str
    text: str
    audio_file: str | None  # relative to the data folder
    audio_seconds: float | None
    image_file: str | None
    created: str
    timings: dict | None
    interrupted: bool
    transcript: str | None


@dataclass(frozen=True)
class Clip:
    """Mono audio: float32 samples in [-1, 1] or int16; stored as 16-bit WAV."""

    samples: np.ndarray
    rate: int

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.rate

    def float32_bytes(self) -> bytes:
        """Little-endian float32 samples in [-1, 1], as the engine takes speech."""
        samples = self.samples / 32768.0 if self.samples.dtype == np.int16 else self.samples
        return samples.astype("<f4").tobytes()

    def wav_bytes(self) -> bytes:
        samples = self.samples
        if samples.dtype != np.int16:
            samples = (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2")
        buffer = io.BytesIO()
        with wave.open(buffer, "wb") as wav:
            wav.setnchannels(1)
            wav.setsampwidth(2)
            wav.setframerate(self.rate)
            wav.writeframes(samples.astype("<i2", copy=False).tobytes())
        return buffer.getvalue()


def write_atomically(path: Path, data: bytes) -> None:
    """Temporary file beside `path`, then rename: readers see the whole file or none.

    No fsync: this guards against the app crashing mid-write, which is what loses turns; waiting
    for the disk on the GUI thread would cost more than a power cut is likely to.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


class HistoryStore:
    """The history of one data folder. Use from one thread (the GUI's, or a command's)."""

    def __init__(self, folder: Path, connection: sqlite3.Connection, notice: str | None = None) -> None:
        self.folder = folder
        self.db = connection
        self.notice = notice  # set when the previous database had to be moved aside

    @classmethod
    def open(cls, folder: Path | None = None, recover: bool = True) -> HistoryStore:
        """Open (or create) the history in `folder`.

        With `recover`, a locked or damaged database is renamed `history.sqlite3.<reason>-<time>`
        and replaced by an empty one; without it (the read-only command) that is an OmnivoxError.
        """
        folder = Path(folder) if folder is not None else default_data_dir()
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OmnivoxError(f"cannot use {folder} as the data folder: {err.strerror or err}") from None
        path = folder / DB_NAME
        try:
            store = cls(folder, connect(path))
        except sqlite3.DatabaseError as err:
            if not recover:
                raise OmnivoxError(f"the history database {path} cannot be read: {err}") from None
            reason = "locked" if "locked" in str(err) else "damaged"
            moved = move_aside(path, reason)
            notice = f"The history database was {reason} ({err}); it was moved to {moved.name}, a new one started."
            store = cls(folder, connect(path), notice)
        if recover:  # the window's start; the read-only `history` command changes nothing
            store.sweep_orphans()
        return store

    def close(self) -> None:
        self.db.close()

    # ---- conversations -------------------------------------------------------------------------

    def new_conversation(self, title: str = "") -> Conversation:
        with self.db:
            cursor = self.db.execute("INSERT INTO conversations (title, created) VALUES (?, ?)", (title, now_iso()))
        return self.conversation(cursor.lastrowid)

    def conversation(self, conversation_id: int) -> Conversation:
        row = self.db.execute("SELECT id, title, created FROM conversations WHERE id = ?",
                              (conversation_id,)).fetchone()
        if row is None:
            raise KeyError(conversation_id)
        return Conversation(*row)

    def conversations(self) -> list[Conversation]:
        """Newest first."""
        rows = self.db.execute("SELECT id, title, created FROM conversations ORDER BY created DESC, id DESC")
        return [Conversation(*row) for row in rows]

    def rename(self, conversation_id: int, title: str) -> None:
        with self.db:
            self.db.execute("UPDATE conversations SET title = ? WHERE id = ?",
                            (" ".join(title.split()), conversation_id))

    def delete(self, conversation_id: int) -> None:
        """The conversation, its turns and their files."""
        with self.db:  # its turns go by the foreign key's cascade
            self.db.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))
        shutil.rmtree(self.media_folder(conversation_id), ignore_errors=True)

    # ---- turns ---------------------------------------------------------------------------------

    def add_turn(self, conversation_id: int, role: str, text: str = "", *, audio: Clip | None = None,
                 image_png: bytes | None = None, timings: dict | None = None, interrupted: bool = False) -> Turn:
        """Store one turn; its files first, so the row never names a file that is not all there."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")
        stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{role}-{uuid.uuid4().hex[:8]}"
        audio_file = self.write_media(conversation_id, f"{stem}.wav", audio.wav_bytes()) if audio else None
        image_file = self.write_media(conversation_id, f"{stem}.png", image_png) if image_png else None
        with self.db:
            cursor = self.db.execute(
                "INSERT INTO turns (conversation, role, text, audio_file, audio_seconds, image_file, created, timings,"
                " interrupted) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (conversation_id, role, text, audio_file, round(audio.seconds, 3) if audio else None, image_file,
                 now_iso(), json.dumps(timings) if timings is not None else None, int(interrupted)),
            )
            if role == "user" and text.strip():  # an untitled conversation is named after its first typed words
                self.db.execute("UPDATE conversations SET title = ? WHERE id = ? AND title = ''",
                                (shorten(text), conversation_id))
        return self.turn(cursor.lastrowid)

    def set_transcript(self, turn_id: int, transcript: str) -> None:
        with self.db:
            self.db.execute("UPDATE turns SET transcript = ? WHERE id = ?", (transcript, turn_id))
            self.db.execute("UPDATE conversations SET title = ? WHERE title = '' AND id = "
                            "(SELECT conversation FROM turns WHERE id = ?)", (shorten(transcript), turn_id))

    def set_interrupted(self, turn_id: int) -> None:
        """Mark a stored reply as cut short: the user spoke over it (or stopped it) while it was still playing."""
        with self.db:
            self.db.execute("UPDATE turns SET interrupted = 1 WHERE id = ?", (turn_id,))

    def add_timings(self, turn_id: int, timings: dict) -> None:
        """Merge more timings into a stored turn's (the voice loop's, known once playback drained)."""
        with self.db:
            row = self.db.execute("SELECT timings FROM turns WHERE id = ?", (turn_id,)).fetchone()
            if row is None:
                raise KeyError(turn_id)
            merged = {**(json.loads(row[0]) if row[0] else {}), **timings}
            self.db.execute("UPDATE turns SET timings = ? WHERE id = ?", (json.dumps(merged), turn_id))

    def turn(self, turn_id: int) -> Turn:
        row = self.db.execute(f"SELECT {TURN_COLUMNS} FROM turns WHERE id = ?", (turn_id,)).fetchone()
        if row is None:
            raise KeyError(turn_id)
        return turn_from_row(row)

    def turns(self, conversation_id: int) -> list[Turn]:
        rows = self.db.execute(f"SELECT {TURN_COLUMNS} FROM turns WHERE conversation = ? ORDER BY id",
                               (conversation_id,))
        return [turn_from_row(row) for row in rows]

    def path(self, relative: str) -> Path:
        return self.folder / relative

    # ---- files ---------------------------------------------------------------------------------

    def media_folder(self, conversation_id: int) -> Path:
        return self.folder / MEDIA_DIR / str(conversation_id)

    def write_media(self, conversation_id: int, name: str, data: bytes) -> str:
        path = self.media_folder(conversation_id) / name
        write_atomically(path, data)
        return path.relative_to(self.folder).as_posix()

    def sweep_orphans(self, min_age_s: float = ORPHAN_AGE_S) -> list[Path]:
        """Delete media files no turn names and temporary files a crash cut off; returns them.

        Only files older than `min_age_s`: a second window on the same folder may be between writing
        a file and committing its row right now. Folders left empty go too."""
        media = self.folder / MEDIA_DIR
        referenced = {name for (name,) in self.db.execute(
            "SELECT audio_file FROM turns WHERE audio_file IS NOT NULL "
            "UNION SELECT image_file FROM turns WHERE image_file IS NOT NULL")}
        cutoff = time.time() - min_age_s
        removed = []
        for path in sorted(media.rglob("*"), reverse=True):  # a folder's files before the folder
            if path.is_dir() and not path.is_symlink():
                with contextlib.suppress(OSError):
                    path.rmdir()  # only when empty
            elif path.relative_to(self.folder).as_posix() not in referenced and path.lstat().st_mtime < cutoff:
                path.unlink(missing_ok=True)
                removed.append(path)
        return removed

    def export_markdown(self, conversation_id: int, folder: Path) -> Path:
        """Write `<title>.md` into `folder` with the turns' images and audio copied beside it."""
        conversation = self.conversation(conversation_id)
        name = safe_file_name(conversation.display_title)
        media = Path(folder) / f"{name} files"
        lines = [f"# {conversation.display_title}", "", f"*{conversation.created}*", ""]
        for turn in self.turns(conversation_id):
            who = "You" if turn.role == "user" else "Omnivox"
            lines.append(f"**{who}** ({turn.created}){' — interrupted' if turn.interrupted else ''}")
            lines.append("")
            if turn.text:
                lines += [turn.text, ""]
            if turn.transcript:
                lines += [f"> {turn.transcript}", ""]
            for relative, markdown in ((turn.image_file, "![image]({})"), (turn.audio_file, "[audio]({})")):
                if relative and self.path(relative).is_file():
                    media.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(self.path(relative), media / Path(relative).name)
                    lines += [markdown.format(f"<{media.name}/{Path(relative).name}>"), ""]
        target = Path(folder) / f"{name}.md"
        write_atomically(target, "\n".join(lines).encode("utf-8"))
        return target

    def as_json(self) -> dict:
        """Everything, for `python main.py history --json`; file paths absolute."""

        def absolute(relative: str | None) -> str | None:
            return str(self.path(relative)) if relative else None

        conversations = []
        for conversation in self.conversations():
            turns = [{**asdict(turn), "audio_file": absolute(turn.audio_file), "image_file": absolute(turn.image_file)}
                     for turn in self.turns(conversation.id)]
            for turn in turns:
                del turn["conversation"]
            conversations.append({**asdict(conversation), "turns": turns})
        return {"data_dir": str(self.folder), "conversations": conversations}


TURN_COLUMNS = ("id, conversation, role, text, audio_file, audio_seconds, image_file, created, timings, interrupted,"
                " transcript")


def turn_from_row(row: tuple) -> Turn:
    *head, timings, interrupted, transcript = row
    return Turn(*head, json.loads(timings) if timings else None, bool(interrupted), transcript)


def connect(path: Path) -> sqlite3.Connection:
    """Open and check the database; sqlite3.DatabaseError when it is locked or damaged."""
    connection = sqlite3.connect(path, timeout=LOCK_TIMEOUT_S)
    try:
        connection.execute("PRAGMA journal_mode = WAL")  # also the first read: fails here on a non-database
        connection.execute("PRAGMA synchronous = NORMAL")  # WAL stays consistent after an app crash
        connection.execute("PRAGMA foreign_keys = ON")
        (check,) = connection.execute("PRAGMA quick_check").fetchone()
        if check != "ok":
            raise sqlite3.DatabaseError(f"integrity check failed: {check}")
        with connection:
            connection.executescript(SCHEMA)
    except sqlite3.DatabaseError:
        connection.close()
        raise
    return connection


def move_aside(path: Path, reason: str) -> Path:
    """Rename the database (and its WAL files) out of the way; returns the new name."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}.{reason}-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        source = path.with_name(path.name + suffix)
        if source.exists():
            os.replace(source, target.with_name(target.name + suffix))
    return target


def shorten(text: str) -> str:
    words = " ".join(text.split())
    return words if len(words) <= TITLE_CHARS else words[:TITLE_CHARS - 1].rstrip() + "…"


def safe_file_name(title: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in " -_." else "_" for c in title).strip(" .")
    return cleaned[:80] or "conversation"
