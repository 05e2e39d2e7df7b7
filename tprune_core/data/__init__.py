"""Layer 1, data: audio files -> clips -> datasets and folders -> fbank features, cached on disk (no model code)."""
