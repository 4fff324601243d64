"""ferrobatch inside the engines teams already run: `ferrobatch.integrations.ray` for Ray Data
(`pip install 'ferrobatch[ray]'`)."""
