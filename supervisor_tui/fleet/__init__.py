"""The fleet: the Redis registration protocol's channels in both directions, and node presence.

``messages`` holds the typed wire models, ``link`` the Redis connection with its reconnect, ``listener`` turns
received messages into external plugins, ``announcer`` publishes this node's plugins, ``presence`` keeps the
node's record and lists the fleet's nodes, ``registrations`` persists what Redis registered. ``FleetNode``
(``node``) puts them together for the runtime. Nothing here imports the HTTP surface or the TUI.
"""
