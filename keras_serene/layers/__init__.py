"""keras_serene.layers: public layers."""
