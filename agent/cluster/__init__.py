"""The other agents: peer slots and gossip links, placement, forwarding, the policy host.

Everything here runs on the daemon's loop thread except the policy's training thread
(``learning``); peers' reports pass ``gossip_sanity`` before the scheduler sees them.
"""
