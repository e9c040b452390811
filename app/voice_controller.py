"""The voice loop's conductor: one turn from the user's first word to the last sample of the reply.

`VoiceController` is a state machine on the GUI thread over three sources: the listener's events
(from its reader thread, hopped over by a queued signal), the engine client's signals, and the
playback draining (polled):

    idle ─start─▶ listening ─speech─▶ user speaking ─endpoint─▶ thinking ─audio─▶ speaking ─drained─▶ listening
                      ▲                      │ too short                              │
                      └──────────────────────┘            user speaks over it ────────┴─▶ user speaking (barge-in)

In push-to-talk the resting state is idle instead of listening: only the key starts a turn.
The picture a turn carries is the one current when the user *started* speaking (that is what
they were looking at when they asked), encoded on a worker and sent ahead as a prefetch so the
engine encodes it while they talk; a turn whose picture is still being encoded when the user stops
waits for it (turns go out in the order they were spoken). Every turn sent ends in exactly one
`turnFinished` with its record, however it ends.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal

import numpy as np
import soxr
from PySide6.QtCore import QObject, QTimer, Signal, Slot

from app.audio.capture import Capture
from app.audio.echo import CANCELLED_DB, EchoCanceller, make_echo_canceller
from app.audio.endpointer import (
    ECHO_GAIN_DB,
    PRESETS,
    SILENT_DB,
    Endpointer,
    Event,
    Level,
    SpeechDiscarded,
    SpeechEnded,
    SpeechStarted,
)
from app.audio.listener import Listener, Notice
from app.audio.playback import Playback
from app.visual.context import Picture
from engine.protocol import SAMPLE_RATE

if TYPE_CHECKING:
    from app.engine_client import EngineClient
    from app.settings import Preferences
    from app.voice import VoiceSink

IDLE, LISTENING, USER_SPEAKING, THINKING, SPEAKING = "idle", "listening", "user speaking", "thinking", "speaking"
STATES = (IDLE, LISTENING, USER_SPEAKING, THINKING, SPEAKING)  # the same names as app/voice.py's indicator states
Mode = Literal["hands_free", "push_to_talk"]
MODES: tuple[Mode, ...] = ("hands_free", "push_to_talk")
DRAIN_POLL_MS = 20  # one playback block: the state leaves "speaking" within a block of the last sample
MOMENTS = ("speech_end", "endpoint", "request_sent", "first_text", "first_audio_played")


@dataclass
class VoiceSettings:
    mode: Mode = "hands_free"
    sensitivity: str = "normal"  # a key of app.audio.endpointer.PRESETS
    barge_in: bool = True  # the user's voice over a reply stops it
    headphones: bool = False  # no echo from the speaker reaches the mic: the echo gate relaxes
    max_new_tokens: int = 512


class LevelThrottle:
    """The endpointer reports a level per frame (up to 100 a second); the meter needs about 30.

    Keeps the loudest level between updates, so a short peak still shows.
    """

    def __init__(self, per_second: float = 30.0) -> None:
        self.interval = 1 / per_second
        self.due = 0.0  # stream seconds
        self.peak = SILENT_DB

    def push(self, level: Level) -> float | None:
        """The level to show now, or None when the last update is too recent."""
        self.peak = max(self.peak, level.db)
        if level.t < self.due:
            return None
        # Step the schedule rather than restart it at t, so 30 ms frames still give ~30 updates, not 16.
        self.due = max(self.due + self.interval, level.t - self.interval)
        peak, self.peak = self.peak, SILENT_DB
        return peak


@dataclass(frozen=True, slots=True)
class Heard:
    """A listener event on its way to the GUI thread, with when the reader got it."""

    event: Event | Notice
    at: float  # the controller's clock when the event came out of the endpointer
    stream_now: float = 0.0  # the endpointer's stream position then, in seconds

    def clock_time(self, stream_t: float) -> float:
        """A stream time of this event (like SpeechEnded.end_t) on the controller's clock."""
        return self.at - (self.stream_now - stream_t)


@dataclass
class Outgoing:
    """A turn waiting for its picture to be encoded."""

    pcm: bytes | None
    text: str | None
    picture: Picture | None
    speech_end: float | None
    endpoint: float | None

    @property
    def ready(self) -> bool:
        return self.picture is None or self.picture.ready


@dataclass
class Turn:
    """One request to the engine and its reply, as it happens."""

    id: str
    user_pcm: bytes | None  # 16 kHz mono int16, as heard; None for a typed turn
    user_text: str | None
    image: bytes | None
    speech_end: float | None  # when the user stopped talking; None for a typed turn
    endpoint: float | None  # when the endpointer decided they were done (speech_end + its hangover)
    request_sent: float
    first_text: float | None = None
    first_audio_played: float | None = None
    reply_text: list[str] = field(default_factory=list)
    reply_audio: bytearray = field(default_factory=bytearray)  # float32 16 kHz, as sent to the speaker
    engine_report: dict | None = None  # the engine's turn_done body; None until it arrives
    resampler: soxr.ResampleStream | None = None  # for reply audio not at 16 kHz

    def record(self, interrupted: bool, error: str | None) -> dict:
        """What turnFinished carries: everything the history store and the benchmarks need.

        `timings` are clock seconds; `timings_ms` the same relative to the end of the user's
        speech (for a typed turn: to the request), None for moments that did not happen.
        """
        moments = {name: getattr(self, name) for name in MOMENTS}
        zero = self.speech_end if self.speech_end is not None else self.request_sent
        return {
            "user_pcm": self.user_pcm,
            "user_text": self.user_text,
            "image": self.image,
            "reply_text": "".join(self.reply_text),
            "reply_audio": bytes(self.reply_audio),
            "engine_timings_ms": (self.engine_report or {}).get("timings_ms", {}),
            "timings": moments,
            "timings_ms": {name: None if t is None else round((t - zero) * 1000, 1) for name, t in moments.items()},
            "interrupted": interrupted,
            "error": error,
        }


def float32_pcm(int16_pcm: bytes) -> bytes:
    """The endpointer's int16 speech as the float32 little-endian PCM the engine protocol carries."""
    return (np.frombuffer(int16_pcm, "<i2").astype(np.float32) / 32768).astype("<f4").tobytes()


class VoiceController(QObject):
    """Owns the turn: listens, sends, routes the reply to the speaker, handles barge-in and stop.

    engine: the EngineClient (or anything with its signals and respond/prefetch/cancel).
    playback: the speaker; opened by `start` unless already open, closed by `shutdown`.
    open_capture: makes a fresh, unopened microphone capture for each `start`.
    visual_context: the picture the user is looking at now (encoding on a worker), or None.
    clock: monotonic seconds; give the playback the same clock so first_audio_played compares.
    """

    stateChanged = Signal(str)  # one of STATES
    levelChanged = Signal(float)  # mic level in dBFS (SILENT_DB for silence), ~30 times a second
    notice = Signal(str)  # one line for the user: microphone or speaker trouble, a failed turn
    replyText = Signal(str, str)  # turn id, text delta
    turnFinished = Signal(str, object)  # turn id, Turn.record(); object, so the bytes stay bytes
    turnSent = Signal(str, bytes, int, object)  # turn id, int16 speech, its rate, the attached image (or None)
    heard = Signal(object)  # internal: a Heard from the reader thread, delivered on the GUI thread

    def __init__(self, engine: EngineClient, playback: Playback, open_capture: Callable[[], Capture] = Capture,
                 visual_context: Callable[[], Picture | None] = lambda: None, *, settings: VoiceSettings | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 echo_canceller: Callable[[], EchoCanceller | None] = make_echo_canceller,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.engine = engine
        self.playback = playback
        self.open_capture = open_capture
        self.visual_context = visual_context
        self.settings = replace(settings) if settings else VoiceSettings()  # a copy: the setters change it
        self.clock = clock
        self.make_echo_canceller = echo_canceller
        self.state = IDLE
        self.listener: Listener | None = None
        self.turn: Turn | None = None  # the reply in flight, until it has finished playing
        self.speech_image: Picture | None = None  # the picture frozen at the start of the user's speech
        self.outbox: list[Outgoing] = []  # turns ended but not sent: a picture still being encoded
        self.ignoring = False  # speech over a reply with barge-in off: dropped when it ends
        self.continuing = False  # a turn was cut at the length cap; the next speech start carries it on
        self.drain = QTimer(self)
        self.drain.setInterval(DRAIN_POLL_MS)
        self.drain.timeout.connect(self.on_drain_tick)
        self.heard.connect(self.on_heard)  # queued when emitted from the reader or PortAudio thread
        playback.on_notice = lambda text: self.heard.emit(Heard(Notice(text), self.clock()))
        engine.textDelta.connect(self.on_text_delta)
        engine.audioChunk.connect(self.on_audio_chunk)
        engine.turnDone.connect(self.on_turn_done)
        engine.error.connect(self.on_engine_error)
        engine.engineDied.connect(self.on_engine_died)

    # ---- commands (GUI thread) -------------------------------------------------------------

    def start(self) -> bool:
        """Open the speaker and the microphone and start listening; False (after a notice) without a mic."""
        if self.listener is not None:
            return True
        if not self.playback.available and (notice := self.playback.open()):
            self.notice.emit(notice)
        settings = self.settings
        # With the reply taken out of the mic signal, only its leftover needs the gate. With headphones no
        # echo reaches the mic: nothing to cancel, and the mic's audio stays untouched.
        echo = None if settings.headphones else self.make_echo_canceller()
        self.playback.reference = echo.played if echo else None
        endpointer = Endpointer(settings.sensitivity, hands_free=settings.mode == "hands_free",
                                headphones=settings.headphones,
                                echo_gain_db=ECHO_GAIN_DB - (CANCELLED_DB if echo else 0.0))
        throttle = LevelThrottle()
        self.listener = Listener(self.open_capture(), endpointer, lambda e: self.from_reader(e, endpointer, throttle),
                                 playback_level=lambda: self.playback.level_db, echo=echo)
        if not self.listener.start():
            self.listener = None
            return False
        self.set_state(self.resting_state())
        return True

    def shutdown(self) -> None:
        """At exit: stop listening, end any reply, close the microphone and the speaker."""
        if self.listener is not None:
            listener, self.listener = self.listener, None
            listener.stop()
        self.playback.reference = None
        if self.turn is not None:
            self.interrupt()
        self.speech_image, self.ignoring, self.continuing = None, False, False
        self.outbox.clear()
        self.playback.close()
        self.levelChanged.emit(SILENT_DB)
        self.set_state(IDLE)

    def stop(self) -> None:
        """The stop button: silence the reply and cancel it; the user's own speech carries on."""
        self.playback.stop()
        if self.turn is not None:
            self.interrupt()
            self.set_state(self.resting_state())

    def send_text(self, text: str) -> None:
        """A typed turn, with the picture current now."""
        self.begin_turn(None, text, self.snapshot(), speech_end=None, endpoint=None)

    def set_mode(self, mode: Mode) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.settings.mode = mode
        hands_free = mode == "hands_free"
        self.on_reader(lambda endpointer: setattr(endpointer, "hands_free", hands_free))
        if self.state in (IDLE, LISTENING) and self.listener is not None:
            self.set_state(self.resting_state())

    def press(self) -> None:
        """Push-to-talk key down: a turn starts now, interrupting any reply."""
        if self.listener is not None:
            self.listener.press()

    def release(self) -> None:
        """Push-to-talk key up: the turn is sent."""
        if self.listener is not None:
            self.listener.release()

    def set_sensitivity(self, name: str) -> None:
        if name not in PRESETS:
            raise ValueError(f"sensitivity must be one of {tuple(PRESETS)}, got {name!r}")
        self.settings.sensitivity = name
        self.on_reader(lambda endpointer: endpointer.set_sensitivity(name))

    def set_headphones(self, on: bool) -> None:
        self.settings.headphones = on

        def change(endpointer: Endpointer) -> None:  # on the reader thread, which alone calls the canceller
            endpointer.headphones = on
            listener = self.listener
            if listener is None or (listener.echo is None) == on:
                return
            echo = None if on else self.make_echo_canceller()
            listener.echo = echo
            self.playback.reference = echo.played if echo else None
            endpointer.echo_gain_db = ECHO_GAIN_DB - (CANCELLED_DB if echo else 0.0)

        self.on_reader(change)

    def set_barge_in(self, on: bool) -> None:
        self.settings.barge_in = on

    # ---- the listener (reader thread → GUI thread) -------------------------------------------

    def from_reader(self, event: Event | Notice, endpointer: Endpointer, throttle: LevelThrottle) -> None:
        """Called on the reader thread: thin out the meter, stamp the time, hand over to the GUI thread."""
        if isinstance(event, Level):
            db = throttle.push(event)
            if db is None:
                return
            event = Level(event.t, db, event.voiced)
        self.heard.emit(Heard(event, self.clock(), endpointer.now / SAMPLE_RATE))

    def on_reader(self, change: Callable[[Endpointer], None]) -> None:
        """Apply a change to the endpointer on the reader thread, between frames (it is not thread-safe)."""
        if self.listener is None:
            return  # the next start builds the endpointer from self.settings
        endpointer = self.listener.endpointer

        def command() -> list[Event]:
            change(endpointer)
            return []

        self.listener.commands.put(command)

    @Slot(object)
    def on_heard(self, heard: Heard) -> None:
        event = heard.event
        if isinstance(event, Notice):
            self.notice.emit(event.text)
        elif self.listener is None:
            return  # queued before shutdown
        elif isinstance(event, Level):
            self.levelChanged.emit(event.db)
        elif isinstance(event, SpeechStarted):
            self.on_speech_started()
        elif isinstance(event, SpeechEnded):
            self.on_speech_ended(event, heard)
        elif isinstance(event, SpeechDiscarded):
            self.on_speech_discarded()

    def on_speech_started(self) -> None:
        continuing, self.continuing = self.continuing, False
        if self.turn is not None:
            # With speakers and barge-in off, speech during a reply is most likely the reply's own
            # echo. A key press or the rest of a capped monologue is the user, always.
            if not (self.settings.barge_in or self.settings.mode == "push_to_talk" or continuing):
                self.ignoring = True
                return
            self.interrupt()
        picture = self.speech_image = self.snapshot()
        if picture is not None:
            picture.then(lambda png: self.prefetch(picture, png))
        self.set_state(USER_SPEAKING)

    def prefetch(self, picture: Picture, png: bytes | None) -> None:
        """Let the engine look at the picture while the user is still speaking (not after: the turn has it)."""
        if png is not None and picture is self.speech_image:
            self.engine.prefetch(png)

    def on_speech_ended(self, event: SpeechEnded, heard: Heard) -> None:
        if self.ignoring:
            self.ignoring = False
            return
        image, self.speech_image = self.speech_image, None
        self.continuing = event.reason == "max_length"
        self.begin_turn(event.pcm, None, image, speech_end=heard.clock_time(event.end_t), endpoint=heard.at)

    def on_speech_discarded(self) -> None:
        if self.ignoring:
            self.ignoring = False
            return
        self.speech_image = None
        if self.turn is None and not self.outbox:
            self.set_state(self.resting_state())

    # ---- the turn ------------------------------------------------------------------------------

    def begin_turn(self, pcm: bytes | None, text: str | None, picture: Picture | None, *, speech_end: float | None,
                   endpoint: float | None) -> None:
        """Send the turn once its picture is encoded, after any turn still waiting for its own."""
        self.outbox.append(Outgoing(pcm, text, picture, speech_end, endpoint))
        if picture is not None:
            picture.then(lambda _: self.pump())
        self.set_state(THINKING)
        self.pump()

    def pump(self) -> None:
        while self.outbox and self.outbox[0].ready:
            self.send(self.outbox.pop(0))

    def send(self, outgoing: Outgoing) -> None:
        if self.turn is not None:
            self.interrupt()  # the engine runs one turn at a time; the newest input wins
        self.playback.stop()  # a typed turn's reply may be sounding: the newest input wins the speaker too
        picture, pcm = outgoing.picture, outgoing.pcm
        if picture is not None and picture.failure:
            self.notice.emit(f"The picture could not be encoded ({picture.failure}); the turn was sent without it.")
        image = picture.png if picture is not None else None
        turn_id = self.engine.respond(float32_pcm(pcm) if pcm else None, SAMPLE_RATE, image, outgoing.text,
                                      self.settings.max_new_tokens)
        self.turn = Turn(turn_id, pcm, outgoing.text, image, outgoing.speech_end, outgoing.endpoint,
                         request_sent=self.clock())
        self.set_state(THINKING)
        if pcm:
            self.turnSent.emit(turn_id, pcm, SAMPLE_RATE, image)

    def current(self, turn_id: str) -> Turn | None:
        """The turn in flight if the event is about it; events of cancelled turns still trickle in."""
        return self.turn if self.turn is not None and self.turn.id == turn_id else None

    @Slot(str, str)
    def on_text_delta(self, turn_id: str, text: str) -> None:
        if (turn := self.current(turn_id)) is None:
            return
        if turn.first_text is None:
            turn.first_text = self.clock()
        turn.reply_text.append(text)
        self.replyText.emit(turn_id, text)

    @Slot(str, bytes, int)
    def on_audio_chunk(self, turn_id: str, pcm: bytes, rate: int) -> None:
        if (turn := self.current(turn_id)) is None:
            return
        if rate != SAMPLE_RATE:  # playback takes 16 kHz; a stream resampler keeps chunk seams clean
            turn.resampler = turn.resampler or soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32")
            pcm = turn.resampler.resample_chunk(np.frombuffer(pcm, "<f4")).astype("<f4").tobytes()
        self.play(turn, pcm)
        if self.state == THINKING:
            self.set_state(SPEAKING)

    def play(self, turn: Turn, pcm: bytes) -> None:
        turn.reply_audio += pcm
        self.playback.write(pcm)

    @Slot(str, dict)
    def on_turn_done(self, turn_id: str, report: dict) -> None:
        if (turn := self.current(turn_id)) is None:
            return
        turn.engine_report = report
        if turn.resampler is not None:
            self.play(turn, turn.resampler.resample_chunk(np.zeros(0, np.float32), last=True).astype("<f4").tobytes())
        self.playback.finish()
        self.drain.start()
        self.on_drain_tick()

    @Slot()
    def on_drain_tick(self) -> None:
        if self.turn is None or self.playback.playing:
            return
        self.finish(self.turn, interrupted=bool(self.turn.engine_report and self.turn.engine_report.get("cancelled")))
        self.set_state(self.after_turn())

    @Slot(str, str)
    def on_engine_error(self, request_id: str, message: str) -> None:
        if self.current(request_id) is not None:
            self.fail(message)

    @Slot(str)
    def on_engine_died(self, reason: str) -> None:
        if self.turn is not None:
            self.fail(f"the engine stopped: {reason}")

    def fail(self, message: str) -> None:
        """The engine will not finish this turn: say so, keep what arrived, listen again."""
        assert self.turn is not None
        self.notice.emit(f"The reply failed: {message}")
        self.playback.stop()
        self.finish(self.turn, interrupted=True, error=message)
        self.set_state(self.after_turn())

    def interrupt(self) -> None:
        """Barge-in, stop, or a newer turn: silence the reply now and cancel it in the engine."""
        assert self.turn is not None
        self.playback.stop()
        if self.turn.engine_report is None:
            self.engine.cancel(self.turn.id)
        self.finish(self.turn, interrupted=True)

    def finish(self, turn: Turn, interrupted: bool, error: str | None = None) -> None:
        self.drain.stop()
        self.turn = None
        # Read before anything new is written (the playback resets it for the next reply); a time from
        # before the request is an earlier reply's, left there when this one never reached a speaker.
        played = self.playback.first_sample_time
        if turn.reply_audio and played is not None and played >= turn.request_sent:
            turn.first_audio_played = played
        self.playback.settle()
        self.turnFinished.emit(turn.id, turn.record(interrupted, error))

    # ---- helpers --------------------------------------------------------------------------------

    def snapshot(self) -> Picture | None:
        """The current picture; a failing camera or screen grab costs the picture, not the turn."""
        try:
            return self.visual_context()
        except Exception as error:  # the visual context is outside code (camera, screen) that may raise anything
            self.notice.emit(f"Could not take the picture for this turn: {error}")
            return None

    def after_turn(self) -> str:
        """The state once a reply is over: a turn waiting for its picture is already thinking."""
        return THINKING if self.outbox else self.resting_state()

    def resting_state(self) -> str:
        return LISTENING if self.listener is not None and self.settings.mode == "hands_free" else IDLE

    def set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self.stateChanged.emit(state)


class WindowVoice(QObject):
    """Fits a VoiceController to the window's seam (app/voice.py), on its "controller sends" path.

    The controller sends spoken turns and plays their replies itself; the window adopts each sent
    turn to show and store it. Replies to typed turns (sent by the window) arrive through `play`.
    """

    def __init__(self, controller: VoiceController, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.controller = controller

    def attach(self, window: VoiceSink) -> None:
        controller = self.controller
        controller.levelChanged.connect(window.set_mic_level)
        controller.stateChanged.connect(window.set_voice_state)
        controller.notice.connect(window.show_notice)
        controller.turnSent.connect(window.on_turn_sent)
        controller.visual_context = window.picture
        controller.turnFinished.connect(lambda turn_id, record: window.on_voice_turn_finished(
            turn_id, record["timings_ms"], record["interrupted"]))
        controller.start()

    def set_hands_free(self, on: bool) -> None:
        self.controller.set_mode("hands_free" if on else "push_to_talk")

    def press_to_talk(self) -> None:
        self.controller.press()

    def release_to_talk(self) -> None:
        self.controller.release()

    def play(self, pcm: bytes, rate: int) -> None:
        if self.controller.turn is not None:
            return  # a spoken turn's reply: the controller is already playing it
        if rate != SAMPLE_RATE:
            pcm = soxr.resample(np.frombuffer(pcm, "<f4"), rate, SAMPLE_RATE).astype("<f4").tobytes()
        self.controller.playback.write(pcm)

    def stop_playback(self) -> None:
        self.controller.stop()  # silences the speaker whichever turn it was playing

    def end_playback(self, turn_id: str, interrupted: bool) -> None:
        own = self.controller.turn
        if own is not None and own.id != turn_id:
            return  # a reply the controller's newer turn superseded: the speaker is the new turn's now
        if interrupted:
            self.stop_playback()
        elif own is None:  # a typed reply (the controller ends its own): play out its tail
            self.controller.playback.finish()

    def apply_preferences(self, prefs: Preferences) -> None:
        self.controller.set_sensitivity(prefs.vad_sensitivity)
        self.controller.set_headphones(prefs.output == "headphones")
        self.controller.set_barge_in(prefs.barge_in)

    def shutdown(self) -> None:
        self.controller.shutdown()
