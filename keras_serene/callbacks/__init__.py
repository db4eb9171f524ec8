"""keras_serene.callbacks: public callbacks."""
