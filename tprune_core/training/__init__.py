"""Layer 3, training: the resumable epoch loop, supervised and MAE training, evaluation, the zoo and its release."""
