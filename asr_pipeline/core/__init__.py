"""Framework-free building blocks: audio, features, text metrics, training and decoding."""
