"""keras_serene.regularizers: public regularizers (re-exports of the method packages)."""

from keras_serene.rni.receding_importance import RecedingImportance
