"""Method pieces from the papers that sit between models and training (e.g. teacher weighting)."""
