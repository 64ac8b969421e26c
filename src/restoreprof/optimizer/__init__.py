"""The optimizer: configuration, context pre-warm, parallel restore engine, interception library."""
