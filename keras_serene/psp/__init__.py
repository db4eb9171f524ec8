"""keras_serene.psp: PSP-entropy (Tartaglione et al., ICANN 2020).

`psp_entropy.psp_entropy` (public as `ks.metrics.psp_entropy`) and the
`PSPEntropyLogger` callback (public as `ks.callbacks.PSPEntropyLogger`).
"""
