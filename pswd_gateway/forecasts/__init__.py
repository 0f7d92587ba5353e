"""Carbon and price forecasts: the providers (simulated, file, Carbon Aware SDK) and the feed."""
