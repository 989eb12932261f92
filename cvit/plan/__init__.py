"""`cvit plan`: adapter parameters and a peak-memory estimate of each method, before any GPU is rented."""
