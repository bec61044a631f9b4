"""The official twilio-video JS SDK's own signaling dialect, served at ``/signaling/twilio``.

An app built on ``twilio-video`` 2.x joins our rooms unmodified by passing
``wsServer: 'ws://HOST:PORT/signaling/twilio'`` (and ``insights: false``) to
``Video.connect``. Two layers, as the SDK speaks them (../shared/TWILIO_SIGNALING.md):

* ``tcmp``: the websocket framing (``hello`` / ``welcome`` / ``heartbeat`` / ``msg`` / ``bye``);
* ``session``: RSP v2 room signaling for one participant (``connect`` / ``connected``,
  ``update``, ``sync`` / ``synced``, ``disconnect``, ``ice`` / ``iced``, ``error``), on the
  same room model as ``signaling/server.py``'s participants, so both kinds meet in one room;
* ``translate``: the room model's state in RSP's shapes (participants, published,
  subscribed);
* ``sdp``: our offers rewritten onto the payload types and header-extension ids the
  participant's own offer chose (one BUNDLE: Chrome refuses any reassignment);
* ``service``: the endpoint, sharing ``SignalingService``'s admission limits, sessions'
  reconnect grace and ICE servers.

The SDK always makes the first offer: the media side answers it (``Peer.apply_offer``) and
offers the subscriptions itself afterwards, winning glare.
"""
