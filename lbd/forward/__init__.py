"""L4 forwarding to backends: Maglev tables, the desired nftables ruleset, and its applier."""
