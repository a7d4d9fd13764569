"""The domain core: pure functions, no I/O, no clock reads."""
