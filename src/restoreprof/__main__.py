from restoreprof.cli import main

raise SystemExit(main())
