"""keras_serene.regularizers: public regularizers."""
