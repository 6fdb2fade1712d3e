"""Stage 1's machinery: NETLINK_XFRM sockets on trio, framing, XFRM layouts, the decoder, read-only queries, namespaces, /proc readers."""
