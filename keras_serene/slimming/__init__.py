"""Physical slimming: remove constant channels from a Keras model exactly.

`slimming_plan(model)` reads the functional graph (graph.py: layers and
Keras operations), finds coupled and constant channels (channels.py) and
returns the plan of channel groups, which carries its analysis (plan.py);
`slim(model, plan=None)` applies that plan and returns a new, smaller plain
Keras model with the same outputs (apply.py). How each layer class moves
channels is the `channel_rule` field of the one layer table
(`keras_serene.core.layer_table`, looked up through the class hierarchy);
`register_rule` adds a custom layer (rules.py).

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
