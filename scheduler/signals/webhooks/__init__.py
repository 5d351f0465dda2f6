"""Provider webhooks: verified, recorded and applied in one transaction."""
