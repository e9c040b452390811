"""The voice loop's audio side: devices, microphone capture, turn detection, reply playback. Qt-free.

`endpointer` decides turns from frames (pure logic); `capture` and `playback` wrap sounddevice
streams (the module is injected, so tests drive fake devices); `listener` runs the reader thread
that connects capture to the endpointer.
"""
