"""`python -m keras_serene demo` runs the `keras-serene` command line."""

import sys

from keras_serene.app.cli import main

sys.exit(main())
