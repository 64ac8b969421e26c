"""What this machine has: resolved paths to CRIU, libcuda, bcc and the native library."""
