"""Training loops run by Ray Train (teacher fine-tuning; distillation comes later)."""
