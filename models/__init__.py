"""The learned thermal model: datasets, training, forecasts, headroom."""
