"""The history store (no Qt): turns with their files, rename/delete/export, damaged and locked databases."""

from __future__ import annotations

import io
import json
import os
import sqlite3
import subprocess
import sys
import time
import wave
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.history import DB_NAME, Clip, HistoryStore
from engine.errors import OmnivoxError
from tests.signals import tone

ROOT = Path(__file__).resolve().parents[2]


def png(color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), color).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def store(tmp_path: Path) -> HistoryStore:
    store = HistoryStore.open(tmp_path / "data")
    yield store
    store.close()


def test_turns_are_stored_with_their_audio_and_image_files(store: HistoryStore) -> None:
    conversation = store.new_conversation()
    user = store.add_turn(conversation.id, "user", "What is on my screen?", audio=Clip(tone(1.5), 16000),
                          image_png=png())
    reply = store.add_turn(conversation.id, "assistant", "A red square.", audio=Clip(tone(0.5), 16000),
                           timings={"first_audio": 310.0}, interrupted=True)

    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert [turn.role for turn in store.turns(conversation.id)] == ["user", "assistant"]
    with wave.open(str(store.path(user.audio_file))) as wav:
        assert (wav.getsampwidth(), wav.getnchannels(), wav.getframerate(), wav.getnframes()) == (2, 1, 16000, 24000)
    assert user.audio_seconds == 1.5 and Image.open(store.path(user.image_file)).size == (32, 24)
    assert reply.timings == {"first_audio": 310.0} and reply.interrupted and reply.image_file is None
    assert store.conversation(conversation.id).title == "What is on my screen?"  # named after the first words
    leftovers = [path.name for path in store.folder.rglob("*.tmp")]
    assert leftovers == []


def test_a_transcript_is_filled_in_later_and_names_a_spoken_conversation(store: HistoryStore) -> None:
    conversation = store.new_conversation()
    spoken = store.add_turn(conversation.id, "user", audio=Clip((tone(1.0) * 32767).astype(np.int16), 16000))
    store.set_transcript(spoken.id, "Hello there")
    assert store.turn(spoken.id).transcript == "Hello there"
    assert store.conversation(conversation.id).title == "Hello there"


def test_voice_timings_are_merged_into_a_stored_reply(store: HistoryStore) -> None:
    conversation = store.new_conversation()
    reply = store.add_turn(conversation.id, "assistant", "It is a cat.", timings={"prefill": 80.0})
    store.add_timings(reply.id, {"voice_ms": {"speech_end": 0, "first_audio_played": 910.0}})
    assert store.turn(reply.id).timings == {"prefill": 80.0, "voice_ms": {"speech_end": 0, "first_audio_played": 910.0}}
    with pytest.raises(KeyError):
        store.add_timings(reply.id + 100, {})


def test_rename_delete_and_export(store: HistoryStore, tmp_path: Path) -> None:
    first, second = store.new_conversation(), store.new_conversation()
    store.add_turn(first.id, "user", "Look at this", image_png=png(), audio=Clip(tone(0.4), 16000))
    store.add_turn(first.id, "assistant", "I see a red square.")
    store.rename(first.id, "  Red   square ")
    assert store.conversation(first.id).title == "Red square"
    assert [c.id for c in store.conversations()] == [second.id, first.id]  # newest first

    exported = store.export_markdown(first.id, tmp_path / "out")
    text = exported.read_text()
    assert exported.name == "Red square.md" and "# Red square" in text and "I see a red square." in text
    media = sorted(path.suffix for path in (tmp_path / "out" / "Red square files").iterdir())
    assert media == [".png", ".wav"]
    assert "![image](<Red square files/" in text and "[audio](<Red square files/" in text

    folder = store.media_folder(first.id)
    assert folder.is_dir()
    store.delete(first.id)
    assert not folder.exists() and store.turns(first.id) == []
    assert [c.id for c in store.conversations()] == [second.id]


def test_a_damaged_database_is_moved_aside_and_a_new_one_started(tmp_path: Path) -> None:
    (tmp_path / DB_NAME).write_bytes(b"this is not a database" * 100)
    store = HistoryStore.open(tmp_path)
    assert "damaged" in store.notice and "\n" not in store.notice
    moved = [path.name for path in tmp_path.glob(f"{DB_NAME}.damaged-*")]
    assert len(moved) == 1 and moved[0] in store.notice
    store.add_turn(store.new_conversation().id, "user", "still works")
    store.close()


def test_a_locked_database_is_moved_aside(tmp_path: Path) -> None:
    holder = sqlite3.connect(tmp_path / DB_NAME)  # another program, holding an exclusive lock
    holder.execute("CREATE TABLE other (x)")
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("INSERT INTO other VALUES (1)")
    try:
        store = HistoryStore.open(tmp_path)
        assert "locked" in store.notice
        assert list(tmp_path.glob(f"{DB_NAME}.locked-*"))
        assert store.conversations() == []
        store.close()
    finally:
        holder.close()


def test_the_read_only_command_does_not_move_a_damaged_database(tmp_path: Path) -> None:
    (tmp_path / DB_NAME).write_bytes(b"garbage" * 100)
    with pytest.raises(OmnivoxError, match="cannot be read"):
        HistoryStore.open(tmp_path, recover=False)
    assert (tmp_path / DB_NAME).exists()


def test_history_command_prints_conversations_as_json(store: HistoryStore) -> None:
    conversation = store.new_conversation()
    store.add_turn(conversation.id, "user", "hi", image_png=png(), audio=Clip(tone(0.3), 16000))
    store.add_turn(conversation.id, "assistant", "hello", timings={"total": 12.0})
    out = subprocess.run([sys.executable, "main.py", "history", "--data-dir", str(store.folder), "--json"],
                         cwd=ROOT, capture_output=True, text=True, check=True)
    listing = json.loads(out.stdout)
    [entry] = listing["conversations"]
    user, reply = entry["turns"]
    assert (user["role"], user["text"], reply["role"], reply["text"]) == ("user", "hi", "assistant", "hello")
    assert Path(user["image_file"]).is_file() and Path(user["audio_file"]).is_file()
    assert reply["timings"] == {"total": 12.0} and reply["audio_file"] is None
    assert {"created", "interrupted", "transcript"} <= set(user)


def test_history_command_on_an_empty_folder_creates_nothing(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "main.py", "--data-dir", str(tmp_path / "none"), "history", "--json"],
                         cwd=ROOT, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout)["conversations"] == []
    assert not (tmp_path / "none").exists()


WRITER = """
import sys
from pathlib import Path
import numpy as np
from app.history import Clip, HistoryStore
store = HistoryStore.open(Path(sys.argv[1]))
conversation = store.new_conversation()
audio = Clip(np.random.default_rng().uniform(-1, 1, 16000 * 20).astype(np.float32), 16000)  # 640 KB each
print("writing", flush=True)
while True:
    store.add_turn(conversation.id, "user", "hello", audio=audio, image_png=sys.argv[2].encode() * 20000)
"""


def media_files(folder: Path) -> set[str]:
    return {path.relative_to(folder).as_posix() for path in (folder / "media").rglob("*") if path.is_file()}


def referenced_files(store: HistoryStore) -> set[str]:
    return {name for conversation in store.conversations() for turn in store.turns(conversation.id)
            for name in (turn.audio_file, turn.image_file) if name}


@pytest.mark.slow
def test_files_left_by_kills_mid_write_are_swept_at_start(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    rng = np.random.default_rng(7)
    for _ in range(25):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(folder), "x"], cwd=ROOT, stdout=subprocess.PIPE)
        assert writer.stdout.readline() == b"writing\n"
        time.sleep(rng.uniform(0.0, 0.2))
        writer.kill()
        writer.wait()
        writer.stdout.close()
    store = HistoryStore.open(folder, recover=False)  # the read-only command: it sweeps nothing
    orphans = media_files(folder) - referenced_files(store)
    store.close()
    assert orphans and any(name.endswith(".tmp") for name in orphans)  # what the kills left, as in the probe
    long_ago = time.time() - 3600
    for path in (folder / "media").rglob("*"):
        os.utime(path, (long_ago, long_ago))

    store = HistoryStore.open(folder)  # the window's start
    assert media_files(folder) == referenced_files(store) and referenced_files(store)
    assert store.db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    store.close()


def test_a_young_unreferenced_file_may_be_another_windows_write_and_stays(store: HistoryStore) -> None:
    conversation = store.new_conversation()
    kept = store.add_turn(conversation.id, "user", "hi", image_png=png())
    fresh = store.media_folder(conversation.id) / "20260101-000000-user-0123abcd.wav"
    fresh.write_bytes(b"RIFF")
    stale = store.media_folder(conversation.id) / ".x.png.abc.tmp"
    stale.write_bytes(b"half")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    assert store.sweep_orphans() == [stale]
    assert fresh.exists() and store.path(kept.image_file).exists()
    assert store.sweep_orphans(min_age_s=0) == [fresh]
