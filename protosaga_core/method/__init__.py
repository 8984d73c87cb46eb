"""The paper's method, one stage per module, in the order a scene goes through them.

`train` (Eq. 1-8) → `consensus` or `association` (Eq. 9-16) → `prototypes` (Eq. 17-18) and `lifting` →
`segment` (Eq. 19 and the lifted labels; `baselines` holds Table 4's Cls and k-means). `classifier` is the
τ·cos rule all of them share; `label_edits` keeps Eq. 17 under the viewer's merges and splits.
"""
