"""Work in progress (being written now)."""
class SensitivityOptimizer: pass
