"""Access to the CUDA driver through cuda-python, with errors a user can act on."""
