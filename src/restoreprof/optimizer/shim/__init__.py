"""The LD_PRELOAD interception library (C): sources, build and location."""
