"""``xfrmwatch demo``: a real IKE session replayed with a narration (the shipped recording,
``session.pcap``, see README.md next to it), or (``--live``) a scripted tunnel life in
throwaway namespaces."""
