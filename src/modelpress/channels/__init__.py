"""Channel groups: which hidden channels can be relabelled, rescaled or removed together.

A graph analysis shared by two transforms: the obfuscation passes that permute and rescale
hidden channels (``protect/obfuscate``) and structured pruning, which removes channels
(``compress/structured.py``). ``groups.find_channel_groups`` finds, from every linear producer,
the hidden tensors that share one channel axis through channel-wise ops (``channelwise``) and
residual Adds, with every constant (``ops.Site``) a change of that axis must rewrite
(``sites.rewrite_sites``), or the reason no transform may touch the group.
"""

from __future__ import annotations

from modelpress.channels.groups import ChannelGroup, find_channel_groups

__all__ = ["ChannelGroup", "find_channel_groups"]
