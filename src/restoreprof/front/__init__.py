"""The `restoreprof` command's native front door (front.c; its JSON in json.c): a restore handed
to a running warm pool without starting Python; everything else goes to restoreprof-py
(restoreprof.launcher).

Installed as the `restoreprof` script by setup.py (build_scripts); where no C compiler is found
the script is instead the Python launcher itself (front/restoreprof), which behaves the same,
only with Python's start on every restore.
"""
