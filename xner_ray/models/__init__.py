"""Model loading: the token classifier and the embedded builtin models."""
