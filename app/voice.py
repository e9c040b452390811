"""The seam between the window and the voice loop, which plugs in without the window changing.

The window works without a voice controller: typed turns only, the mic controls disabled. A
controller is any object with the `VoiceController` methods; the window calls `attach(window)`
once, and the controller then drives the window through the `VoiceSink` slots — typically by
connecting its own Qt signals to them, so calls from its audio threads arrive on the GUI thread:

    window = MainWindow(..., voice=controller)                  # calls controller.attach(window)
    controller.levelChanged.connect(window.set_mic_level)      # inside attach: dBFS per frame
    controller.stateChanged.connect(window.set_voice_state)

The controller sends spoken turns itself (engine.respond, as app/voice_controller.py does), with
the picture `window.picture()` gives at speech start, and reports each with `on_turn_sent(turn_id,
pcm, rate, image)`; the window shows and stores the turn and follows its reply through the
engine's signals (the controller plays that reply itself). Typed turns are the window's; their
reply audio reaches the controller through `play`, and `end_playback` when they end.

Barge-in is the controller's call (it knows the setting and whether its own playback is
audible): it cancels its own reply at once; a typed reply is cancelled when the spoken turn is
sent, and its audio stops then.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from app.settings import Preferences
    from app.visual.context import Picture

STATES = ("idle", "listening", "user speaking", "thinking", "speaking")  # what the window's indicator shows


class VoiceSink(Protocol):
    """What the window offers the controller (Qt slots; call on the GUI thread or connect signals)."""

    def set_mic_level(self, db: float) -> None: ...  # the meter; dBFS, -100 for silence
    def set_voice_state(self, state: str) -> None: ...  # one of STATES
    def picture(self) -> Picture | None: ...  # what a turn starting now carries (PNG encoding on a worker)
    def on_turn_sent(self, turn_id: str, pcm: bytes, rate: int, image: bytes | None) -> None: ...  # int16 speech
    def on_voice_turn_finished(self, turn_id: str, timings_ms: dict,  # its latency telemetry; whether its
                               interrupted: bool) -> None: ...  # playback was cut (spoken over, engine died)
    def show_notice(self, message: str) -> None: ...  # one line in the status area (device lost, …)


class VoiceController(Protocol):
    """What the window asks of the controller."""

    def attach(self, window: VoiceSink) -> None: ...
    def set_hands_free(self, on: bool) -> None: ...  # False: push-to-talk
    def press_to_talk(self) -> None: ...  # Space held (push-to-talk)
    def release_to_talk(self) -> None: ...
    def play(self, pcm: bytes, rate: int) -> None: ...  # a typed turn's reply audio as it streams: float32 LE
    def stop_playback(self) -> None: ...  # stop button
    def end_playback(self, turn_id: str, interrupted: bool) -> None: ...  # a reply ended: play out the rest, or cut it
    def apply_preferences(self, prefs: Preferences) -> None: ...  # devices, sensitivity, barge-in, output
    def shutdown(self) -> None: ...


def combined_state(reply_phase: str, voice_state: str) -> str:
    """The one state the indicator shows, from the reply's phase and the voice loop's state.

    The user talking wins (that is what they want confirmed); then the reply (thinking, then
    speaking while it streams); then playback still draining after the reply's text is done.
    """
    if voice_state == "user speaking":
        return voice_state
    if reply_phase in ("thinking", "speaking"):
        return reply_phase
    return voice_state if voice_state in STATES else "idle"
