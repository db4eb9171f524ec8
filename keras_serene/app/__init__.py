"""keras_serene.app: the command line, the demo and what serves them.

`cli` (the `keras-serene` command), `demo`, `report` and `plots` (the demo's
figures), `datasets` (digits, Fashion-MNIST), `zoo` (the papers' networks).
Public as `ks.datasets`, `ks.zoo`, `ks.plots`, `ks.report`.
"""
