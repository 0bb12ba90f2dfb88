"""The filter chain: small detection classes plus one chain that applies policy."""
