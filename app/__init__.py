"""The Omnivox desktop app (PySide6). Never imports torch: the engine runs in its own process."""
