"""Model loading (Hub, local, packaged, GGUF) and value-head wrappers."""
