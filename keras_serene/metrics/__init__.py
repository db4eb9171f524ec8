"""keras_serene.metrics: public metrics."""
