"""Data: TFDS builders, SentencePiece, the Grain pipeline, global-array assembly. Never imports the model."""
