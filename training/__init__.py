"""Training diffractive networks: data sets (training.datasets) and the torch-based trainer."""
