"""The netlink side: XFRM definitions, the trio socket, namespaces, /proc readers."""
