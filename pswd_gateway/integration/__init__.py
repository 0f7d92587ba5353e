"""The outside world besides devices: carbon and price forecasts (OpenADR and heat offers later)."""
