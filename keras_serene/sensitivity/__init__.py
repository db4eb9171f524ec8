"""keras_serene.sensitivity: the sensitivity estimators."""
