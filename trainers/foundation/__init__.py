"""The mini profile's foundation: the small models the suite trains itself once per store
(temporal VAE, base video model), instead of downloading SVD (docs/mini.md)."""
