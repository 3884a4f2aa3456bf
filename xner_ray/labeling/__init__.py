"""Teacher labeling: Ray-free stages (``stages``) and their Ray Data wiring (``pipeline``)."""
