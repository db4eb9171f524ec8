"""Physical slimming: remove constant channels from a Keras model exactly.

`slimming_plan(model)` finds the coupled channel groups (plan.py), `slim(model,
plan=None)` returns a new, smaller plain Keras model with the same outputs
(apply.py). How each layer class moves channels is one table (rules.py);
`register_rule` adds a custom layer.

References:
    EIDOSLAB `simplify` (Bragagnolo et al., SoftwareX 2022) and Torch-Pruning
    (Fang et al., CVPR 2023, https://arxiv.org/abs/2301.12900).
"""

from keras_serene.slimming.apply import slim
from keras_serene.slimming.plan import ChannelGroup
from keras_serene.slimming.plan import GroupMember
from keras_serene.slimming.plan import SlimmingPlan
from keras_serene.slimming.plan import slimming_plan
from keras_serene.slimming.rules import RULES
from keras_serene.slimming.rules import ChannelRule
from keras_serene.slimming.rules import register_rule

__all__ = [
    "RULES",
    "ChannelGroup",
    "ChannelRule",
    "GroupMember",
    "SlimmingPlan",
    "register_rule",
    "slim",
    "slimming_plan",
]
