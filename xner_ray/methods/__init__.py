"""The papers' methods, one folder each: tsl, rikd, advpicker, projection (and calibrenet);
``common`` holds what the distillation jobs share."""
